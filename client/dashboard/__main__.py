"""``python -m fenliu.client.dashboard``: the same as ``fenliu-dashboard``."""

from ._cli import main

main()
