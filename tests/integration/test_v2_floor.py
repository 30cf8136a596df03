"""bench.experiments.v2_floor's bare server: the recorded answers come back byte for byte, and its
statistics move with the requests it answered (what perf_analyzer needs to measure it at all)."""

from __future__ import annotations

import grpc
import numpy as np

from bench.experiments.v2_floor import BARE_VARIANTS, BareServer, record_answers
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input


def test_the_bare_server_answers_what_convserve_answered(tiny_server):
    answers = record_answers(tiny_server.address, "tiny")
    assert pb.ModelInferResponse.FromString(answers["ModelInfer"]).outputs[0].name == "logits"
    for variant in BARE_VARIANTS:
        bare = BareServer(answers, variant)
        try:
            with grpc.insecure_channel(bare.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                request = pb.ModelInferRequest(model_name="tiny")
                append_input(request, "input", np.ones((1, 1, 8, 8), np.float32))
                for _ in range(3):
                    assert stub.ModelInfer(request).SerializeToString() == answers["ModelInfer"], variant
                assert (
                    stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny")).SerializeToString()
                    == (answers["ModelMetadata"])
                )
                (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="tiny", version="7")).model_stats
        finally:
            bare.stop()
        assert (stats.name, stats.version) == ("tiny", "7"), variant
        assert stats.inference_count == stats.execution_count == stats.inference_stats.success.count == 3, variant
