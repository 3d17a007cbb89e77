"""Server reflection under both names: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection (1.85) ships only the v1alpha service. v1 is the same protocol with the
package renamed: the same messages, field numbers and method, so the v1alpha servicer
answers v1 callers byte for byte; it is registered again under the v1 service name.
Clients that ask for v1 first (grpcurl, Postman, grpcui) then need no fallback.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_reflection.v1alpha import _async, reflection, reflection_pb2 as rpb

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA: str = reflection.SERVICE_NAME
NAMES = (V1, V1ALPHA)


def add_reflection(server: Any, service_names: tuple[str, ...]) -> None:
    """Reflection over ``service_names`` (plus both reflection services) on ``server``."""
    servicer = _async.ReflectionServicer((*service_names, *NAMES))
    for name in NAMES:
        handlers = {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=rpb.ServerReflectionRequest.FromString,
                response_serializer=rpb.ServerReflectionResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
