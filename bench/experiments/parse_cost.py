"""`python -m bench.experiments.parse_cost`: ModelInfer's wire walk vs protobuf's whole parse, by message size.

Why: service/servicers/infer_wire.py parses a message whole with protobuf's C parser up to
WHOLE_PARSE_MAX_BYTES and walks the wire format (tensor bytes kept as views) above it. This times
both ways on digits-sized and ResNet-sized requests (one input, one requested output), in this
process, so the threshold can be checked on any machine.

    python -m bench.experiments.parse_cost
    python -m bench.experiments.parse_cost --sizes 4096,65536,602112 --repeat 5
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np

from service.api.inference import grpc_service_pb2 as pb
from service.servicers.infer_wire import WHOLE_PARSE_MAX_BYTES, split_infer_request
from service.servicers.v2_tensors import append_input


def request_bytes(tensor_bytes: int) -> bytes:
    request = pb.ModelInferRequest(model_name="digits", id="req-1")
    append_input(request, "input", np.zeros((1, max(1, tensor_bytes // 4)), np.float32))
    request.outputs.add(name="logits")
    return request.SerializeToString()


def best_us(call, number: int, repeat: int) -> float:
    """The best of `repeat` means of `number` calls, in microseconds (the least disturbed timing)."""
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.parse_cost", description=__doc__)
    parser.add_argument("--sizes", default="4096,32768,65536,131072,602112", help="tensor bytes, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"whole parse up to {WHOLE_PARSE_MAX_BYTES} message bytes\n")
    print("| message bytes | wire walk us | whole parse us |\n|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        data = request_bytes(size)
        number = max(20, 2_000_000 // len(data))
        walk = best_us(lambda data=data: split_infer_request(data, 0), number, args.repeat)
        whole = best_us(lambda data=data: split_infer_request(data, len(data)), number, args.repeat)
        print(f"| {len(data):,} | {walk:.1f} | {whole:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
