"""`convserve optimize --expose-features`: CAM for classifiers that were exported without a features output.

Foreign graphs are built here with onnx.helper (conv -> pooling -> a linear head in each form an
exporter writes), configured by `convserve config init` as a user would, then rewritten; the
bundled lenet5 and simple_cnn (which refuse Explain as shipped) are rewritten and explained
through a real server.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from entrypoint import main as convserve
from export.expose_features import ADDED_WEIGHTS, ExposeRequest, expose_features, find_features
from export.evaluate.cam_digits import evaluate, score_cam_heat
from export.exporter import ExportError
from service.client import VisionClient
from service.client.errors import RpcFailed
from service.config import load_model_config
from service.config_init import init_config
from service.pipelines.cam_weights import read_class_weights
from service.preprocess import preprocess_batch
from testkit import REPO_ROOT, ServerThread, test_settings

CLASSES, CHANNELS, SIZE = 3, 4, 12


def _foreign(path, head: str, *, batch="N", pool: str = "gap") -> dict:
    """[batch, 3, 12, 12] -> Conv 3x3 -> Relu -> pooling -> head -> scores [batch, 3]; returns its weights."""
    rng = np.random.default_rng(5)
    conv = rng.normal(0, 0.5, (CHANNELS, 3, 3, 3)).astype(np.float32)
    linear = rng.normal(0, 0.5, (CLASSES, CHANNELS)).astype(np.float32)
    inits = [numpy_helper.from_array(conv, "conv_w")]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["act"]),
    ]
    if pool == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", ["act"], ["pooled"]))
    else:  # ReduceMean over the spatial axes (opset 18: axes as an input)
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
        nodes.append(helper.make_node("ReduceMean", ["act", "axes"], ["pooled"], keepdims=1))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    if head == "gemm":  # what torch exports for nn.Linear: B stored [C, K], transB=1
        inits += [numpy_helper.from_array(linear, "fc_w"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b")]
        nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "b"], ["scores"], transB=1))
    elif head == "matmul":  # B stored [K, C], the bias a separate Add
        inits += [
            numpy_helper.from_array(linear.T.copy(), "fc_w"),
            numpy_helper.from_array(np.ones(CLASSES, np.float32), "b"),
        ]
        nodes += [
            helper.make_node("MatMul", ["flat", "fc_w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["scores"]),
        ]
    else:  # an MLP head: not one linear layer, so only Score-CAM applies
        inits += [numpy_helper.from_array(rng.normal(0, 0.5, (CHANNELS, 8)).astype(np.float32), "w1")]
        inits += [numpy_helper.from_array(rng.normal(0, 0.5, (8, CLASSES)).astype(np.float32), "w2")]
        nodes += [
            helper.make_node("MatMul", ["flat", "w1"], ["hidden"]),
            helper.make_node("Relu", ["hidden"], ["hidden_act"]),
            helper.make_node("MatMul", ["hidden_act", "w2"], ["scores"]),
        ]
    graph = helper.make_graph(
        nodes,
        "foreign_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return {"conv": conv, "linear": linear}


def _configured(tmp_path, head: str, **kwargs) -> tuple:
    repo = tmp_path / "repo"
    weights = _foreign(repo / "foreign" / "1" / "model.onnx", head, **kwargs)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    init_config(repo / "foreign" / "1" / "model.onnx", labels_path=labels)
    return repo, weights


def _samples(count: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((count, 3, SIZE, SIZE)).astype(np.float32)


@pytest.mark.parametrize("pool", ["gap", "reducemean"])
def test_a_gemm_head_after_global_pooling_gives_cam_with_the_graphs_own_initializer(tmp_path, pool):
    repo, weights = _configured(tmp_path, "gemm", pool=pool)
    version_dir, choice = expose_features(ExposeRequest(repo, "foreign", None), _samples())
    assert (choice.method, choice.tensor, choice.channels, choice.spatial) == ("cam", "act", CHANNELS, (SIZE, SIZE))
    config = load_model_config(version_dir.parent / "config.yaml")
    cam = config.postprocessing.cam
    assert (config.name, cam.method, cam.features_output, cam.weights_initializer) == (
        "foreign_cam",
        "cam",
        "features",
        "fc_w",
    )
    assert [o.dims for o in config.outputs] == [(-1, CLASSES), (-1, CHANNELS, SIZE, SIZE)]
    np.testing.assert_array_equal(read_class_weights(version_dir / "model.onnx", "fc_w"), weights["linear"])
    assert (version_dir.parent / "labels.txt").read_text().split() == ["cat", "dog", "bird"]


def test_a_transposed_matmul_head_gets_an_exact_cc_copy_and_the_served_map_matches_numpy(tmp_path):
    repo, weights = _configured(tmp_path, "matmul")
    version_dir, choice = expose_features(ExposeRequest(repo, "foreign", None, name="explained"), _samples())
    assert choice.method == "cam" and choice.weights_initializer is None
    config = load_model_config(version_dir.parent / "config.yaml")
    assert config.postprocessing.cam.weights_initializer == ADDED_WEIGHTS
    np.testing.assert_array_equal(read_class_weights(version_dir / "model.onnx", ADDED_WEIGHTS), weights["linear"])
    # The map the server returns is ReLU(W_c . f) of the graph's own feature maps (numpy reference).
    image = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    server = ServerThread(test_settings(repo)).start()
    try:
        with VisionClient(server.address) as client:
            explained = client.explain([image], "explained").results[0]
            classified = client.classify([image], "explained", top_k=3).results[0]
    finally:
        server.stop()
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    tensor, _ = preprocess_batch([image], config.preprocessing)  # the client sends arrays as BGR PNG
    scores, features = session.run(["scores", "features"], {"image": tensor})
    top = int(scores[0].argmax())
    assert explained.method == "cam" and explained.class_index == top == classified.top.class_index
    reference = np.maximum(np.einsum("k,khw->hw", weights["linear"][top], features[0]), 0)
    np.testing.assert_allclose(explained.raw, reference, rtol=1e-4, atol=1e-5)


def test_an_mlp_head_is_not_one_linear_layer_so_the_method_is_score_cam(tmp_path):
    repo, _ = _configured(tmp_path, "mlp")
    _, choice = expose_features(ExposeRequest(repo, "foreign", None), _samples())
    assert choice.method == "score_cam" and choice.tensor == "act" and choice.weights is None


def test_a_fixed_batch_graph_keeps_its_batch_axis_and_serves(tmp_path):
    repo, _ = _configured(tmp_path, "gemm", batch=1)
    version_dir, _ = expose_features(ExposeRequest(repo, "foreign", None), _samples(1))
    graph = onnx.load(str(version_dir / "model.onnx")).graph
    assert graph.output[-1].type.tensor_type.shape.dim[0].dim_value == 1
    assert load_model_config(version_dir.parent / "config.yaml").batching.max_batch_size == 1


def test_the_answer_is_unchanged_and_recorded_in_the_card(tmp_path):
    repo, _ = _configured(tmp_path, "matmul")
    version_dir, _ = expose_features(ExposeRequest(repo, "foreign", None), _samples(4))
    before = ort.InferenceSession(str(repo / "foreign" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = _samples(4)
    np.testing.assert_allclose(
        after.run(["scores"], {"image": x})[0], before.run(["scores"], {"image": x})[0], atol=1e-5
    )
    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["derived_from"]["model"] == "foreign" and card["features"]["method"] == "cam"
    assert (
        card["parity"]["compared"].startswith("answer output") and max(card["parity"]["max_abs_diff"].values()) <= 1e-5
    )


def test_refusals_name_what_to_change(tmp_path):
    repo, _ = _configured(tmp_path, "gemm")
    model = onnx.load(str(repo / "foreign" / "1" / "model.onnx"))
    with pytest.raises(ExportError, match=r"'nope' is not a tensor that 'scores' depends on; 4-D candidates.*act"):
        find_features(model, "scores", "nope")
    with pytest.raises(ExportError, match=r"'flat' is not a 4-D"):
        find_features(model, "scores", "flat")
    with pytest.raises(ExportError, match="no output 'logits'"):
        find_features(model, "logits")
    expose_features(ExposeRequest(repo, "foreign", None), _samples())
    with pytest.raises(ExportError, match="already has postprocessing.cam"):
        expose_features(ExposeRequest(repo, "foreign_cam", None), _samples())


def test_a_graph_without_convolution_or_pooling_is_refused(tmp_path):
    from tests.integration.test_config_init import foreign_classifier  # Flatten -> MatMul only

    path = foreign_classifier(tmp_path / "repo" / "flat" / "1" / "model.onnx")
    with pytest.raises(
        ExportError, match=r"no convolution with a spatial output feeds 'scores'.*--expose-features TENSOR"
    ):
        find_features(onnx.load(str(path)), "scores")


@pytest.fixture(scope="module")
def bundled_digits_with_features(tmp_path_factory):
    """Copies of the bundled lenet5 and simple_cnn, rewritten by the command a user runs."""
    repo = tmp_path_factory.mktemp("digits") / "repo"
    for name in ("lenet5", "simple_cnn"):
        shutil.copytree(REPO_ROOT / "model_repo" / name, repo / name)
        assert (
            convserve(["optimize", "--repo", str(repo), "--model", name, "--expose-features", "--max-maps", "8"]) == 0
        )
    return repo


@pytest.mark.parametrize(("name", "dims"), [("lenet5", (16, 5, 5)), ("simple_cnn", (16, 4, 4))])
def test_bundled_digit_models_explain_after_expose_features(bundled_digits_with_features, name, dims):
    from export.data.mnist import heldout_digits

    repo = bundled_digits_with_features
    config = load_model_config(repo / f"{name}_cam" / "config.yaml")
    assert config.outputs[-1].dims == (-1, *dims) and config.postprocessing.cam.method == "score_cam"
    images, labels = heldout_digits()
    server = ServerThread(test_settings(repo)).start()
    try:
        with VisionClient(server.address) as client:
            with pytest.raises(RpcFailed) as refused:
                client.explain([images[0]], name)  # the model as shipped has no feature output
            assert refused.value.code.name == "FAILED_PRECONDITION"
            reply = client.explain(list(images[:4]), f"{name}_cam")
    finally:
        server.stop()
    session = ort.InferenceSession(str(repo / f"{name}_cam" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for image, label, result in zip(images[:4], labels[:4], reply.results):
        assert result.method == "score_cam" and result.raw.shape == dims[1:]
        assert result.upsampled.shape == image.shape and 0 <= result.upsampled.min() <= result.upsampled.max() <= 1
        assert result.class_index == label  # these four are classified right by both models
        assert result.upsampled.max() > 0
        # the localisation figure of docs/cam.md is computed from the same map Explain returns
        predicted, heat = score_cam_heat(session, config, image)
        assert predicted == result.class_index
        np.testing.assert_allclose(heat, result.upsampled, atol=1e-3)


def test_the_digit_localisation_evaluation_beats_a_map_that_knows_nothing(bundled_digits_with_features):
    from export.data.mnist import heldout_digits

    images, labels = heldout_digits()
    report = evaluate(bundled_digits_with_features / "simple_cnn_cam", images[:200], labels[:200])
    assert report.images == 200 and report.accuracy > 0.9 and 0.1 < report.ink_fraction < 0.5
    assert report.pointing > report.ink_fraction + 0.1 and report.ink_share > report.ink_fraction
