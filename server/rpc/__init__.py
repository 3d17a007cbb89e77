"""The gRPC adapter: protobuf <-> core commands, status mapping, server lifecycle."""
