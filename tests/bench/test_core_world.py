"""bench/core_world.py under callgrind with its cache simulation, on a tiny world: the
simulated caches are this CPU's (sysfs), and the misses are attributed to named
functions, the core's among them. Asserts the record's shape, never a figure's size."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from core_world import cache_options  # noqa: E402


def test_the_simulated_caches_are_this_cpus() -> None:
    options = dict(option.split("=") for option in cache_options())
    assert set(options) == {"--I1", "--D1", "--LL"}, options
    for value in options.values():
        size, ways, line = map(int, value.split(","))
        sets = size // (ways * line)
        assert sets > 0 and sets & (sets - 1) == 0, value  # valgrind wants 2^n sets
    assert int(options["--LL"].split(",")[0]) >= int(options["--D1"].split(",")[0])


def test_a_cache_of_sets_not_a_power_of_two_is_simulated_no_larger(tmp_path: Path) -> None:
    """A 260 MiB 20-way L3 (212,992 sets: valgrind refuses it) becomes 2^17 sets, 160 MiB."""
    for i, (level, kind, size, ways) in enumerate(
        [("1", "Data", "48K", "12"), ("1", "Instruction", "32K", "8"),
         ("2", "Unified", "2048K", "16"), ("3", "Unified", "266240K", "20")]
    ):  # fmt: skip
        index = tmp_path / f"index{i}"
        index.mkdir()
        files = {"level": level, "type": kind, "size": size, "ways_of_associativity": ways,
                 "coherency_line_size": "64"}  # fmt: skip
        for name, value in files.items():
            (index / name).write_text(value + "\n")
    options = dict(option.split("=") for option in cache_options(tmp_path))
    assert options == {"--D1": "49152,12,64", "--I1": "32768,8,64", "--LL": "167772160,20,64"}


def test_misses_are_attributed_to_named_functions() -> None:
    if shutil.which("valgrind") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True)
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "core_world.py"), "--world-shape", "realistic",
         "--fill", "random", "--worlds", "3000", "--rounds", "1", "--reps", "1", "--n", "300",
         "--calls", "300", "--cache-sim", "--top", "8"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    record = json.loads(out.stdout.splitlines()[-1])
    assert record["fill"] == "random"
    result = record["results"]["3000"]
    assert result["reason"] == "STRATEGY"  # real rule-6 decisions, not retries
    total = result["cache_misses"]["DLmr"] + result["cache_misses"]["DLmw"]
    by_function = result["misses_by_function"]
    assert 0 < len(by_function) <= 8, by_function
    # names, not callgrind's "(id)" back-references; each a share of the total
    assert not [name for name in by_function if name.startswith("(")], by_function
    assert sum(by_function.values()) <= total + 0.1 * len(by_function), (by_function, total)
    assert list(by_function.values()) == sorted(by_function.values(), reverse=True)
    assert "last-level misses (data) a decision, by the function that took them" in out.stdout


def _open_messages(flush: int, *options: str) -> dict[str, Any]:
    """bench/core_world.py's record of rule-2 messages in a tiny world, L2 simulated as
    the last level, ``flush`` KiB written between two decisions."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "core_world.py"), "--kind", "open",
         "--worlds", "3000", "--rounds", "1", "--reps", "1", "--n", "300", "--calls", "300",
         "--cache-sim", "--last-level", "2", "--flush", str(flush), "--top", "4", *options],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    record = json.loads(out.stdout.splitlines()[-1])
    assert (record["kind"], record["flush_kib"]) == ("open", flush)
    assert record["cold_code"] == ("--cold-code" in options)
    result: dict[str, Any] = record["results"]["3000"]
    return result


def test_a_flush_between_decisions_makes_them_cold_without_counting_it() -> None:
    """``--flush``: the lines written between two decisions evict the core's from the
    simulated L2 (``--last-level 2``), so each decision misses more there, while the
    instructions counted stay the decisions' own (the flush runs outside them)."""
    warm, cold = _open_messages(0), _open_messages(4096)
    assert warm["reason"] == cold["reason"] == "OPEN_SESSION"  # rule 2, not retries
    misses = [r["cache_misses"]["DLmr"] + r["cache_misses"]["DLmw"] for r in (warm, cold)]
    assert misses[1] > 3 * misses[0], misses
    instructions = [r["instructions"] for r in (warm, cold)]
    assert abs(instructions[1] - instructions[0]) < 0.1 * instructions[0], instructions


def test_cold_code_counts_the_code_lines_a_cold_decision_fetches() -> None:
    """``--cold-code``: with a 1 KiB I1 every instruction line goes to the simulated L2,
    which the flush emptied, so a cold decision's code lines are counted (ILmr), and the
    functions' shares are of code and data; without it the 64 KiB I1 keeps the code the
    flush never touches, and the shares are the data's alone."""
    warm_code, cold_code = _open_messages(4096), _open_messages(4096, "--cold-code")
    assert warm_code["reason"] == cold_code["reason"] == "OPEN_SESSION"
    lines = [r["cache_misses"]["ILmr"] for r in (warm_code, cold_code)]
    assert lines[1] > 10 * max(lines[0], 1) and lines[1] > 50, lines
    instructions = [r["instructions"] for r in (warm_code, cold_code)]
    assert abs(instructions[1] - instructions[0]) < 0.1 * instructions[0], instructions
    # the same top functions take code misses too: their shares grow (~2x here)
    shares = [sum(r["misses_by_function"].values()) for r in (warm_code, cold_code)]
    assert shares[1] > 1.4 * shares[0], shares
    data = cold_code["cache_misses"]["DLmr"] + cold_code["cache_misses"]["DLmw"]
    assert shares[1] <= data + lines[1] + 0.4, (shares, data, lines)
