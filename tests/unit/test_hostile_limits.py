"""Limits against hostile input, as pure functions on crafted bytes (tests/integration/test_hostile.py
sends the same bytes to a real server).

Header readers must read sizes where libjpeg and libtiff read them, OpenCV's own pixel limit must
hold once the server has set it, request budgets are priced before decoding, config files cannot
expand without bound, and every error text is bounded.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from testkit import REPO_ROOT
from bench.hostile_requests import billion_laughs_yaml, lying_jpeg, lying_tiff, plain_huge_jpeg, png_header
from service.budget import check_kept_pixels, check_model_inputs, fit_to_budget, image_budget, image_tensor_bytes
from service.config import MAX_CONFIG_BYTES, BatchingConfig, ModelConfig, load_model_config
from service.errors import MAX_MESSAGE_CHARS, ConfigError, InvalidArgument, bounded
from service.image_header import image_size
from service.preprocess import decode_image
from service.request_checks import check_class_filter_length
from service.runtime import cpu_memory_mode
from service.api.inference import grpc_service_pb2 as pb
from service.servicers.v2_tensors import decode_raw, decode_typed

FCN8S = load_model_config(REPO_ROOT / "model_repo" / "fcn8s" / "config.yaml")


def test_jpeg_stuffed_zero_is_not_a_marker():
    """FF 00 is skipped as libjpeg skips it, so the real 30000 x 30000 frame is found and refused."""
    assert image_size(lying_jpeg()) == (30000, 30000)
    with pytest.raises(InvalidArgument, match="over the limit"):
        decode_image(lying_jpeg(), None)


def test_jpeg_fill_bytes_before_a_marker_are_swallowed():
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 48, 64, 1) + b"\x01\x11\x00"
    assert image_size(b"\xff\xd8" + b"\xff" * 5 + sof[1:] + b"\xff\xd9") == (64, 48)


def test_jpeg_segment_length_below_two_is_unreadable():
    assert image_size(b"\xff\xd8\xff\xe0\x00\x01" + b"\x00" * 32) is None


def test_tiff_first_of_duplicated_tags_wins_whatever_its_integer_type():
    assert image_size(lying_tiff()) == (30000, 30000)
    with pytest.raises(InvalidArgument, match="over the limit"):
        decode_image(lying_tiff(), None)


@pytest.mark.parametrize("kind, fmt", [(1, "<B"), (6, "<b"), (8, "<h"), (9, "<i")])
def test_tiff_byte_and_signed_size_tags_are_read(kind, fmt):
    def entry(tag, value):
        return struct.pack("<HHI", tag, kind, 1) + struct.pack(fmt, value).ljust(4, b"\x00")

    data = b"II*\x00" + struct.pack("<IH", 8, 2) + entry(256, 100) + entry(257, 50) + b"\x00" * 16
    assert image_size(data) == (100, 50)


def test_tiff_negative_or_multi_valued_size_is_unreadable():
    negative = (
        b"II*\x00"
        + struct.pack("<IH", 8, 2)
        + struct.pack("<HHIi", 256, 9, 1, -5)
        + struct.pack("<HHII", 257, 4, 1, 10)
        + b"\x00" * 16
    )
    counted = (
        b"II*\x00"
        + struct.pack("<IH", 8, 2)
        + struct.pack("<HHII", 256, 4, 2, 10)
        + struct.pack("<HHII", 257, 4, 1, 10)
        + b"\x00" * 16
    )
    assert image_size(negative) is None and image_size(counted) is None


def test_a_side_over_the_decoders_limit_is_refused_by_name():
    with pytest.raises(InvalidArgument, match="over 1048576 pixels"):
        decode_image(png_header(10_000_000, 1), None)


CHILD = """
import json, sys, time
from service.decoder_limits import set_decoder_pixel_limit
took_effect = set_decoder_pixel_limit(40_000_000)
import cv2, numpy as np
from bench.hostile_requests import plain_huge_jpeg, lying_tiff
out = {"took_effect": took_effect}
for name, data in (("jpeg", plain_huge_jpeg()), ("tiff", lying_tiff())):
    started = time.perf_counter()
    try:
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        out[name] = "decoded"
    except cv2.error as exc:
        out[name] = exc.msg
    out[name + "_s"] = time.perf_counter() - started
out["hwm_mib"] = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
print(json.dumps(out))
"""


def test_opencv_refuses_a_lying_header_itself_once_the_limit_is_set():
    """Without the server's header check: OpenCV's own limit refuses 30000 x 30000 from the header."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["took_effect"] is True
    for name in ("jpeg", "tiff"):
        assert "CV_IO_MAX_IMAGE_PIXELS" in out[name], out
        assert out[name + "_s"] < 1.0
    assert out["hwm_mib"] < 300, out
    assert len(plain_huge_jpeg()) < 400 and len(lying_tiff()) < 400


def test_native_model_images_are_downscaled_into_their_budget():
    budget = 4 * 2**20
    for width, height in ((3162, 3162), (1_000_000, 1), (640, 480)):
        spec = fit_to_budget(png_header(width, height), FCN8S.preprocessing, budget)
        assert image_tensor_bytes(width, height, spec) <= budget
        assert spec.native_scale < FCN8S.preprocessing.native_scale
        # bisection finds (nearly) the largest scale that fits, not a needlessly small one
        bigger = spec.model_copy(update={"native_scale": spec.native_scale * 1.05})
        assert image_tensor_bytes(width, height, bigger) > budget or spec.native_scale * 1.05 > 2.0
    small = fit_to_budget(png_header(300, 200), FCN8S.preprocessing, budget)
    assert small is FCN8S.preprocessing  # within budget: served exactly as configured


def test_fixed_size_models_are_priced_from_the_image_count():
    config = ModelConfig.model_validate(
        {
            "name": "m",
            "task": "classification",
            "inputs": [{"name": "x", "dims": [-1, 3, 224, 224]}],
            "outputs": [{"name": "y", "dims": [-1, 3]}],
            "preprocessing": {"size": [224, 224]},
            "batching": {"max_request_bytes": 2 * 3 * 224 * 224 * 4, "max_queue_bytes": 2**30},
        }
    )
    assert image_budget(config, 2) == 3 * 224 * 224 * 4
    with pytest.raises(InvalidArgument, match="max_request_bytes"):
        image_budget(config, 3)


@pytest.mark.parametrize(
    "shape, fragment",
    [
        ((1, 3, 40, 40), "multiples of its stride 32"),
        ((1, 3, 0, 0), "at least 1"),
        ((1, 3, 1024, 1376), "max_request_bytes"),
    ],
)
def test_tensors_the_graph_cannot_take_are_refused_naming_the_constraint(shape, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        check_model_inputs(FCN8S, {"input": np.zeros(shape, np.float32)})
    check_model_inputs(FCN8S, {"input": np.zeros((1, 3, 64, 96), np.float32)})


def test_request_budget_cannot_exceed_the_queue_budget():
    with pytest.raises(ValueError, match="could never be queued"):
        BatchingConfig(max_request_bytes=2, max_queue_bytes=1)


def test_bytes_element_count_is_refused_before_splitting():
    raw = bytes(4 * 16_000_000)
    started = time.perf_counter()
    with pytest.raises(InvalidArgument, match="over the limit of 64"):
        decode_raw(raw, "BYTES", [16_000_000], "input 'x'", max_bytes_elements=64)
    contents = pb.InferTensorContents()
    contents.bytes_contents.extend([b""] * 1000)
    with pytest.raises(InvalidArgument, match="over the limit of 64"):
        decode_typed(contents, "BYTES", [1000], "input 'x'", max_bytes_elements=64)
    assert time.perf_counter() - started < 0.1


def test_billion_laughs_and_oversized_configs_are_refused_with_a_short_error(tmp_path):
    bomb = tmp_path / "config.yaml"
    bomb.write_text(billion_laughs_yaml())
    with pytest.raises(ConfigError, match="YAML aliases") as error:
        load_model_config(bomb)
    assert len(str(error.value)) < 300
    big = tmp_path / "big.yaml"
    big.write_text("description: '" + "x" * MAX_CONFIG_BYTES + "'\n")
    with pytest.raises(ConfigError, match="over the limit"):
        load_model_config(big)
    few = tmp_path / "few.yaml"  # a handful of anchors is still fine YAML
    few.write_text("a: &dims [-1, 3]\nb: *dims\n")
    assert yaml.safe_load(few.read_text()) == {"a": [-1, 3], "b": [-1, 3]}


def test_aliased_literal_values_are_sketched_not_printed(tmp_path):
    lines = ["x0: &x0 [a, a, a, a, a, a, a, a]"] + [
        f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 8) + "]" for i in range(1, 7)
    ]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\nname: m\ntask: *x6\n")
    with pytest.raises(ConfigError) as error:
        load_model_config(path)
    assert len(str(error.value)) <= MAX_MESSAGE_CHARS + 200


def test_messages_are_bounded_in_one_place():
    assert bounded("x" * 10) == "x" * 10
    cut = bounded("y" * 5000)
    assert cut.startswith("y" * MAX_MESSAGE_CHARS) and "4000 more characters" in cut
    assert len(InvalidArgument("z" * 10**6).message) < MAX_MESSAGE_CHARS + 50


def test_class_filter_longer_than_the_classes_is_refused_from_its_length():
    check_class_filter_length(5, 5)
    with pytest.raises(InvalidArgument, match="at most 5"):
        check_class_filter_length(6, 5)
    with pytest.raises(InvalidArgument, match="at most 4096"):
        check_class_filter_length(10**6)


def test_variable_shape_models_give_their_arena_back_by_default():
    fixed = ModelConfig.model_validate(
        {
            "name": "m",
            "task": "classification",
            "inputs": [{"name": "x", "dims": [-1, 3, 8, 8]}],
            "outputs": [{"name": "y", "dims": [-1, 3]}],
            "preprocessing": {"size": [8, 8]},
        }
    )
    assert cpu_memory_mode(FCN8S) == "shrink" and cpu_memory_mode(fixed) == "arena"
    forced = FCN8S.model_copy(update={"runtime": FCN8S.runtime.model_copy(update={"cpu_memory": "no_arena"})})
    assert cpu_memory_mode(forced) == "no_arena"


def test_kept_originals_are_bounded_in_pixels_together():
    check_kept_pixels([png_header(4000, 5000), png_header(4000, 5000), b"not an image"], 40_000_000)
    with pytest.raises(InvalidArgument, match="at most 40000000"):
        check_kept_pixels([png_header(6000, 6000)] * 2, 40_000_000)
