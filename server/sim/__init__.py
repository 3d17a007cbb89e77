"""The what-if simulator (issue 14): a shop's traffic through the real core under other
policies. See ``docs/simulate.md``; the CLI is ``fenliu simulate``."""

from .engine import Analysis, Traffic, Variant, analyse, check_invariants, parse_variant, simulate
from .model import Empirical, Harness, Parametric, Script
from .recording import Recording, load
from .synthetic import Model, parse_model, traffic
