"""service.server.add_generic: a generated service added as generic handlers only, still served."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.server import _GenericHandlers, add_generic


def test_a_service_added_as_generic_handlers_answers_calls_over_loopback():
    async def main():
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        add_generic(health_pb2_grpc.add_HealthServicer_to_server, servicer, server)
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await channel.unary_unary("/grpc.health.v1.Health/NoSuchMethod")(b"", timeout=5)
        finally:
            await server.stop(None)
        return reply.status, unknown.value.code()

    assert asyncio.run(main()) == (health_pb2.HealthCheckResponse.SERVING, grpc.StatusCode.UNIMPLEMENTED)


def test_the_registered_method_handlers_are_dropped_and_a_service_without_generic_ones_refused():
    generic = _GenericHandlers()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), generic)
    assert len(generic.handlers) == 1  # the generic handler; its registered twin was not kept

    def registers_nothing(servicer, server):
        server.add_registered_method_handlers("some.Service", {})

    class NeverServed:  # add_generic must refuse before it touches the server
        def add_generic_rpc_handlers(self, handlers):
            raise AssertionError("nothing should have been added")

    with pytest.raises(RuntimeError, match="registered no generic handler"):
        add_generic(registers_nothing, object(), NeverServed())
