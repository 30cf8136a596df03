"""The typed vision API (convserve.v1.VisionService) on a real server: Classify and StreamClassify.

Scores are checked against ONNX Runtime run in this process on the same preprocessed tensors;
encoded images come in every supported format, and a JPEG carrying an EXIF orientation tag must be
classified upright.
"""

from __future__ import annotations

import io

import cv2
import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.config import load_model_config
from service.postprocess.classify import softmax
from service.preprocess import preprocess_encoded, preprocess_image

from testkit import ServerThread, write_tiny_model
from testkit import test_settings as settings_for

LABELS = ["cat", "dog", "bird"]
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("vision") / "repo"
    write_tiny_model(repo, versions=(1, 2))
    return repo


@pytest.fixture(scope="module")
def server(repo):
    server = ServerThread(settings_for(repo)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield vpb_grpc.VisionServiceStub(channel)


@pytest.fixture(scope="module")
def spec(repo):
    return load_model_config(repo / "tiny" / "config.yaml").preprocessing


def probabilities(repo, tensor, version=2):
    """Softmax of the tiny model's logits, computed by ONNX Runtime in this process."""
    session = ort.InferenceSession(str(repo / "tiny" / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
    return softmax(session.run(["logits"], {"input": tensor})[0])


def photo(seed, height=30, width=20):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(image, extension):
    ok, data = cv2.imencode(extension, image)
    assert ok, extension
    return data.tobytes()


def assert_matches(result, probs, k):
    order = np.argsort(-probs, kind="stable")[:k]
    got = [(p.label, p.class_index) for p in result.predictions]
    assert got == [(LABELS[i], int(i)) for i in order]
    np.testing.assert_allclose([p.score for p in result.predictions], probs[order], atol=1e-6)


def test_classify_every_format_in_request_order(stub, repo, spec):
    extensions = [".png", ".jpg", ".bmp", ".webp", ".png"]
    encoded = [encode(photo(seed, 30 + 4 * seed, 20 + seed), ext) for seed, ext in enumerate(extensions)]
    tensor = np.random.default_rng(99).random((1, 8, 8), dtype=np.float32)
    request = vpb.ClassifyRequest(model=vpb.ModelRef(name="tiny"), top_k=2)
    for data in encoded:
        request.images.add(encoded=data)
    request.images.add(tensor=vpb.Tensor(shape=[1, 8, 8], dtype="float32", data=tensor.tobytes()))
    reply = stub.Classify(request)
    assert (reply.model_name, reply.model_version) == ("tiny", "2")
    batch = np.stack([preprocess_encoded(data, spec)[0] for data in encoded] + [tensor])
    want = probabilities(repo, batch)
    assert len(reply.results) == len(batch)
    for result, probs in zip(reply.results, want):
        assert len(result.predictions) == 2
        assert_matches(result, probs, 2)


def test_classify_version_and_top_k(stub, repo, spec):
    data = encode(photo(7), ".png")
    want = probabilities(repo, preprocess_encoded(data, spec)[0][None], version=1)[0]
    request = vpb.ClassifyRequest(model=vpb.ModelRef(name="tiny", version="1"), images=[vpb.Image(encoded=data)])
    default = stub.Classify(request)  # top_k 0: the config's default (2)
    assert default.model_version == "1"
    assert_matches(default.results[0], want, 2)
    request.top_k = 50  # more than the classes: every class
    assert_matches(stub.Classify(request).results[0], want, 3)


def exif_jpeg(upright: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose stored pixels, shown with `orientation` applied, look like `upright`."""
    stored = {1: upright, 6: np.rot90(upright, k=1), 8: np.rot90(upright, k=-1), 3: np.rot90(upright, k=2)}[orientation]
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buffer, "JPEG", quality=100, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_classify_applies_exif_orientation(stub, repo, spec, orientation):
    y, x = np.mgrid[0:32, 0:16]
    upright = np.where(y < 10, 230, (x * 12 + y * 3) % 200).astype(np.uint8)
    data = exif_jpeg(upright, orientation)
    # Independent reference: Pillow decodes and applies the EXIF tag; the server uses OpenCV.
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    assert shown.shape == upright.shape
    want = probabilities(repo, preprocess_image(shown, spec, source_order="rgb")[0][None])[0]
    ignored = np.asarray(Image.open(io.BytesIO(data)).convert("L"))  # the stored, un-rotated pixels
    wrong = probabilities(repo, preprocess_image(ignored, spec, source_order="rgb")[0][None])[0]
    assert np.abs(want - wrong).max() > 0.01  # the test could tell a missed rotation apart
    reply = stub.Classify(
        vpb.ClassifyRequest(model=vpb.ModelRef(name="tiny"), images=[vpb.Image(encoded=data)], top_k=3)
    )
    scores = np.zeros(3)
    for p in reply.results[0].predictions:
        scores[p.class_index] = p.score
    np.testing.assert_allclose(scores, want, atol=2e-3)


def frames(datas, first_options=None, top_k=2):
    for index, data in enumerate(datas):
        frame = vpb.ClassifyFrame(
            frame_id=100 + index, capture_timestamp_us=5000 + index, top_k=top_k, image=vpb.Image(encoded=data)
        )
        if index == 0:
            frame.model.name = "tiny"
            if first_options is not None:
                frame.options.CopyFrom(first_options)
        yield frame


def test_stream_classify_in_order_with_a_bad_frame(stub, repo, spec):
    datas = [encode(photo(20 + i), ".png") for i in range(6)]
    datas[3] = b"this is not an image"
    results = list(stub.StreamClassify(frames(datas)))
    assert [r.frame_id for r in results] == [100 + i for i in range(6)]
    assert [r.capture_timestamp_us for r in results] == [5000 + i for i in range(6)]
    bad = results[3]
    assert bad.WhichOneof("outcome") == "error"
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "decode" in bad.error.message
    for index, result in enumerate(results):
        assert (result.model_name, result.model_version) == ("tiny", "2")
        assert not result.dropped and result.frames_dropped == 0
        if index == 3:
            continue
        assert result.WhichOneof("outcome") == "result"
        want = probabilities(repo, preprocess_encoded(datas[index], spec)[0][None])[0]
        assert_matches(result.result, want, 2)


def slow_frame() -> bytes:
    """A 3000x3000 PNG of 14 kB that takes far longer to decode than the next frames take to arrive."""
    return encode(np.tile(np.arange(3000, dtype=np.uint8)[None, :], (3000, 1)), ".png")


def test_stream_drop_frames_reports_dropped(stub):
    small = [encode(photo(40 + i), ".png") for i in range(10)]
    options = vpb.StreamOptions(drop_frames=True, max_pending=1)
    results = list(stub.StreamClassify(frames([slow_frame(), *small], options)))
    assert [r.frame_id for r in results] == [100 + i for i in range(11)]  # every frame answered, in order
    dropped = [r for r in results if r.dropped]
    assert dropped, "frames sent while the first one decodes must be dropped"
    assert not results[0].dropped and not results[-1].dropped  # the newest waiting frame always runs
    for result in dropped:
        assert result.WhichOneof("outcome") is None
    assert [r.frames_dropped for r in dropped] == list(range(1, len(dropped) + 1))
    assert results[-1].frames_dropped == len(dropped)
    for result in results:
        if not result.dropped:
            assert result.WhichOneof("outcome") == "result"


def test_stream_without_drop_frames_answers_every_frame(stub):
    small = [encode(photo(60 + i), ".png") for i in range(6)]
    options = vpb.StreamOptions(drop_frames=False, max_pending=1)
    results = list(stub.StreamClassify(frames([slow_frame(), *small], options)))
    assert [r.frame_id for r in results] == [100 + i for i in range(7)]
    assert all(r.WhichOneof("outcome") == "result" and not r.dropped for r in results)


def test_stream_unknown_model_ends_the_call(stub):
    def one():
        yield vpb.ClassifyFrame(model=vpb.ModelRef(name="nope"), image=vpb.Image(encoded=encode(photo(1), ".png")))

    with pytest.raises(grpc.RpcError) as error:
        list(stub.StreamClassify(one()))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in error.value.details()
