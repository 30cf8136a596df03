"""`convserve loadtest`: a load generator for any Open Inference Protocol (KServe V2) server.

Why its own package: the load tool and the server often share a small machine, so the tool must
cost as little CPU per request as possible. It builds every request message once, serialises it
once, and sends the bytes through grpc.aio with no per-call protobuf work; responses come back as
bytes and are not parsed (one probe request is, before the run, to fail fast on a wrong setup).

Modules: payloads (model discovery and request building), generators (arrival schedules),
engine (the async send loops and multi-process fan-out), report (statistics, table, JSON),
plot (latency over time and the latency histogram), cli (the command line).

Examples:
    convserve loadtest --host 127.0.0.1:8001 --model lenet5 --concurrency 64 --duration 30
    convserve loadtest --host HOST:PORT --model resnet18 --rate 50 --payload jpeg --api vision --plot lat.png
"""
