"""fenliu's Python SDK."""
