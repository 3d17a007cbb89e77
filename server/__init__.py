"""fenliu's server: a pure routing core (``core``) and its gRPC adapter (``rpc``)."""
