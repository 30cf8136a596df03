"""`make bench`: raw ONNX Runtime throughput vs the same models served over gRPC, on one machine.

Modules: models (the benchmark's model repository), raw (in-process ONNX Runtime), server (the
server as a child process, its CPU and RSS read from /proc), load (load-tool runs), profiling
(py-spy summary), results (tables, targets, JSON and markdown), run (the command).
"""
