"""The installed fenliu's version (``--version``, ``fenliu_build_info``)."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The version of the installed ``fenliu`` distribution ("unknown" if not installed)."""
    try:
        return metadata.version("fenliu")
    except metadata.PackageNotFoundError:
        return "unknown"
