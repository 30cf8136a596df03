"""Which HTTP stack to run beside grpc.aio: Starlette on uvicorn (h11 or httptools) against aiohttp.

Both serve one handler, in this process's asyncio loop as convserve does, that does what a small
V2 JSON infer does around the model: read the body, parse the JSON tensor (64 floats, the digits
input), and answer 10 floats as JSON. The model itself is left out on purpose: its cost is the
same whichever stack carries the request, so only the stack's own cost is compared.

A client process sends `--requests` sequential POSTs on one keep-alive connection (http.client)
and prints requests/s and the median latency.

    python -m bench.http_stack_ab --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]}
).encode()
ANSWER = {
    "model_name": "digits",
    "model_version": "1",
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10}],
}


def answer_for(body: bytes) -> bytes:
    request = json.loads(body)
    if len(request["inputs"][0]["data"]) != 64:
        raise ValueError("unexpected body")
    return json.dumps(ANSWER).encode()


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def serve_starlette(sock: socket.socket, http: str, ready: asyncio.Event, stop: asyncio.Event) -> None:
    """uvicorn binds its own socket (host/port): handed a pre-bound socket, its connections showed the
    40 ms delayed-ACK stall of Nagle's algorithm on every small request."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request):
        return Response(answer_for(await request.body()), media_type="application/json")

    app = Starlette(routes=[Route("/v2/models/digits/infer", infer, methods=["POST"])])
    sock.close()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, http=http, loop="none", lifespan="off", log_level="warning", access_log=False
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    ready.port = server.servers[0].sockets[0].getsockname()[1]
    ready.set()
    await stop.wait()
    server.should_exit = True
    await task


async def serve_aiohttp(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
    from aiohttp import web

    async def infer(request):
        return web.Response(body=answer_for(await request.read()), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/digits/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    ready.port = sock.getsockname()[1]
    ready.set()
    await stop.wait()
    await runner.cleanup()


def client(port: int, requests: int) -> None:
    """Runs in a child process: sequential keep-alive POSTs; prints one JSON line."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port)
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        connection.request("POST", "/v2/models/digits/infer", BODY, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        latencies.append(time.perf_counter() - started)
        if response.status != 200 or not payload:
            raise SystemExit(f"bad answer {response.status}")
    total = sum(latencies)
    print(json.dumps({"rps": round(requests / total, 1), "p50_ms": round(statistics.median(latencies) * 1000, 3)}))


async def measure(stack: str, requests: int) -> dict:
    sock = _free_socket()  # aiohttp serves on it; uvicorn closes it and binds its own port 0
    ready, stop = asyncio.Event(), asyncio.Event()
    if stack == "aiohttp":
        server = asyncio.create_task(serve_aiohttp(sock, ready, stop))
    else:
        server = asyncio.create_task(serve_starlette(sock, stack.split("-")[1], ready, stop))
    await ready.wait()
    port = ready.port
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.http_stack_ab",
        "--client",
        str(port),
        "--requests",
        str(requests),
        stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    stop.set()
    await server
    return {"stack": stack, **json.loads(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.requests)
        return
    for stack in ("starlette-h11", "starlette-httptools", "aiohttp"):
        print(json.dumps(asyncio.run(measure(stack, args.requests))))


if __name__ == "__main__":
    main()
