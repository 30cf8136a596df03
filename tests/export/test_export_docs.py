"""docs/export.md's three ways to bring a model, run as written, then served and asked to classify.

Each block after an `<!-- export-example: NAME -->` marker runs in bash in an empty temporary
folder (the `convserve` and `python` of this interpreter first on PATH); what it wrote must load
in a real server and classify an image through the vision API.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.client.vision_client import VisionClient
from testkit import REPO_ROOT, ServerThread, test_settings

DOC = REPO_ROOT / "docs" / "export.md"
# block name -> models it must leave in my_repo/
EXPECTED_MODELS = {"zoo": ("pets",), "module": ("mynet", "mynet_ts", "mynet_ep"), "onnx": ("theirs", "theirs_cam")}


def doc_blocks() -> dict[str, str]:
    text = DOC.read_text()
    return dict(re.findall(r"<!-- export-example: (\w+) -->\s*```sh\n(.*?)```", text, re.S))


def test_the_page_has_the_three_ways():
    assert set(doc_blocks()) == set(EXPECTED_MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_doc_block_runs_as_written_and_its_models_classify(name, tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", doc_blocks()[name]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    repo = tmp_path / "my_repo"
    assert sorted(p.name for p in repo.iterdir()) == sorted(EXPECTED_MODELS[name])
    server = ServerThread(test_settings(repo)).start()
    try:
        image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
        with VisionClient(server.address) as client:
            for model in EXPECTED_MODELS[name]:
                result = client.classify([image], model).results[0]
                assert result.top.label in {"cat", "dog", "bird"}, (model, result)
                assert abs(sum(p.score for p in result.predictions) - 1.0) < 1e-4
                if model.endswith("_cam"):  # GAP + one linear layer: the weighted CAM of the graph's own weights
                    explained = client.explain([image], model).results[0]
                    assert explained.method == "cam" and explained.class_index == result.top.class_index
    finally:
        server.stop()
