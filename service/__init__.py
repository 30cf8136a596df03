"""convserve: a vision inference server on ONNX Runtime, speaking KServe V2 and a typed vision API over gRPC."""

__version__ = "0.1.0"
