"""`python -m bench.experiments.echo_server`: a bare grpc.aio server whose one unary method answers at once.

Why: the floor under convserve's own latency. A request of the same bytes sent to this server
costs what Python gRPC, loopback and the machine's thread wake-ups cost, with no convserve code and
no model; `bench.experiments.latency_breakdown` reports it beside the served time, so the part of a lone
request's latency that the serving code could still remove is visible. Prints "port N" on stdout
when it listens; runs until terminated.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

METHOD = "/convserve.bench.Echo/Size"


async def _size(request: bytes, context) -> bytes:
    return len(request).to_bytes(8, "little")


async def serve() -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1), ("grpc.so_reuseport", 0)])
    service, method = METHOD.rsplit("/", 1)
    handler = grpc.unary_unary_rpc_method_handler(_size)  # bytes in, bytes out: no (de)serialisers
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.lstrip("/"), {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)
