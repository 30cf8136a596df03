"""Models nobody here made, on a real server: a refused config beside a good model, and a
one-channel probability map (a text detector's output) thresholded through Segment.

The bad model (a float16 config on a float32 graph, which used to load READY, advertise FP16 and
fail every request with INTERNAL) must be UNAVAILABLE in RepositoryIndex with the reason naming
the config file and the field, and refuse requests with UNAVAILABLE saying the same; the good
model of the same repository answers. The one-channel map's label map is checked against this
process's ONNX Runtime output thresholded with numpy.
"""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.config import load_model_config
from service.preprocess import preprocess_image
from service.servicers.vision_convert import tensor_from_proto

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


def probability_map_model(directory) -> None:
    """[N, 3, H, W] -> sigmoid(1x1 conv) [N, 1, H, W]: a foreground probability per pixel; config and labels."""
    weight = numpy_helper.from_array(np.array([[[[4.0]], [[-2.0]], [[-1.5]]]], dtype=np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["prob"])]
    graph = helper.make_graph(
        nodes,
        "text_probability",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (directory / "1").mkdir(parents=True)
    onnx.save(model, str(directory / "1" / "model.onnx"))
    (directory / "labels.txt").write_text("background\ntext\n")
    config = {
        "name": directory.name,
        "task": "segmentation",
        "labels": "labels.txt",
        "inputs": [{"name": "input", "dims": [-1, 3, -1, -1]}],
        "outputs": [{"name": "prob", "dims": [-1, 1, -1, -1]}],
        "preprocessing": {"color_order": "rgb", "resize": "native", "stride": 8},
        "postprocessing": {"scores": "probabilities", "segmentation": {"activation": "none", "threshold": 0.4}},
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_one_channel_probability_map_is_thresholded_through_segment(tmp_path):
    repo = tmp_path / "repo"
    probability_map_model(repo / "text")
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)  # multiples of the stride: no padding
    tensor, _ = preprocess_image(rgb, load_model_config(repo / "text" / "config.yaml").preprocessing, "rgb")
    session = ort.InferenceSession(str(repo / "text" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    p = session.run(["prob"], {"input": tensor[None]})[0][0, 0]
    expected = (p > 0.4).astype(np.uint8)
    assert 0 < expected.mean() < 1, "the test image must have both classes"

    server = ServerThread(test_settings(repo)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            encoded, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            assert encoded
            request = vpb.SegmentRequest(
                model=vpb.ModelRef(name="text"), images=[vpb.Image(encoded=data.tobytes())], probabilities=True
            )
            result = vpb_grpc.VisionServiceStub(channel).Segment(request, timeout=30).results[0]
    finally:
        server.stop()
    labels = cv2.imdecode(np.frombuffer(result.label_map_png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(labels, expected)
    assert [(c.class_index, c.label, c.pixels) for c in result.classes] == [
        (0, "background", int((expected == 0).sum())),
        (1, "text", int(expected.sum())),
    ]
    np.testing.assert_allclose(
        tensor_from_proto(result.probabilities, "probabilities"), np.stack([1 - p, p]), atol=1e-6
    )
