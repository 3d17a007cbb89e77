"""Log lines as text or as one JSON object per line, with the call they were logged in.

While a call is served (with ``log_format = json``, ``access_log`` or auth/metrics on,
the call guard sets them) every line carries ``method`` and ``shop_id``. Nothing logs
request contents: a line names a call, never what a buyer wrote.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

call_method: contextvars.ContextVar[str] = contextvars.ContextVar("fenliu_method", default="")
call_shop: contextvars.ContextVar[str] = contextvars.ContextVar("fenliu_shop", default="")

EXTRA_FIELDS = ("code", "duration_ms", "peer", "token")
"""Keys of ``extra={...}`` a JSON line carries (the access log's)."""


class CallContext(logging.Filter):
    """Stamps each record with the method and shop of the call being served ("" if none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.method = call_method.get()
        record.shop_id = call_shop.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, method, shop_id, ..."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "method": getattr(record, "method", ""),
            "shop_id": getattr(record, "shop_id", ""),
        }
        for key in EXTRA_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL message``, then ``[method shop_id]`` inside a call."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        method = getattr(record, "method", "")
        if not method:
            return text
        extras = " ".join(
            f"{key}={getattr(record, key)}" for key in EXTRA_FIELDS if hasattr(record, key)
        )
        shop = getattr(record, "shop_id", "")
        return f"{text} [{method}{' ' + shop if shop else ''}{' ' + extras if extras else ''}]"


def configure(log_format: str = "text", level: str = "info") -> None:
    """Send the root logger's lines to stderr in ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallContext())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
