"""The live supervisor dashboard (``fenliu-dashboard``): an aiohttp server of its own that
watches shops through the SDK and feeds browser pages with server-sent events.

It never imports ``fenliu.server``: everything it shows or does is an SDK call.
"""

from ._app import Dashboard
from ._cli import main
from ._feed import ShopFeed

__all__ = ["Dashboard", "ShopFeed", "main"]
