"""A repository with a good model and one whose config disagrees with its graph, on a real server.

The bad model (a float16 config on a float32 graph, which used to load READY, advertise FP16 and
fail every request with INTERNAL) must be UNAVAILABLE in RepositoryIndex with the reason naming
the config file and the field, and refuse requests with UNAVAILABLE saying the same; the good
model of the same repository answers.
"""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc

from testkit import ServerThread, test_settings, write_tiny_model


def test_a_config_disagreeing_with_its_graph_is_unavailable_and_the_good_model_answers(tmp_path):
    repo = tmp_path / "repo"
    write_tiny_model(repo, name="good")
    bad = write_tiny_model(repo, name="half")
    config = bad / "config.yaml"
    config.write_text(config.read_text().replace("{name: input, dtype: float32,", "{name: input, dtype: float16,"))
    expected = f"{config}: inputs[0].dtype: 'float16' but the graph's input 'input' is float32"

    server = ServerThread(test_settings(repo)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            index = pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
            states = {m.name: (m.state, m.reason) for m in index.models}
            assert states["good"] == ("READY", "")
            assert states["half"][0] == "UNAVAILABLE" and states["half"][1].startswith(expected), states["half"]

            vision = vpb_grpc.VisionServiceStub(channel)
            encoded, data = cv2.imencode(".png", np.full((8, 8, 3), 128, dtype=np.uint8))
            assert encoded
            image = vpb.Image(encoded=data.tobytes())
            reply = vision.Classify(vpb.ClassifyRequest(model=vpb.ModelRef(name="good"), images=[image]), timeout=10)
            assert len(reply.results) == 1 and reply.results[0].predictions[0].label in {"cat", "dog", "bird"}
            with pytest.raises(grpc.RpcError) as refused:
                vision.Classify(vpb.ClassifyRequest(model=vpb.ModelRef(name="half"), images=[image]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "inputs[0].dtype" in refused.value.details(), refused.value.details()
    finally:
        server.stop()
