"""`make demo` end to end: `python -m examples.demo` on the bundled models, without training packages.

The demo must run with only the serving dependencies, so torch, skimage and mlxtend are made
unimportable for it (and for the server it starts, which inherits PYTHONPATH). This test fails
until model_repo/ holds every model the demo calls: a skipped model prints a note, and no note
may appear.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import cv2

from testkit import REPO_ROOT

BLOCKED = ("torch", "torchvision", "skimage", "mlxtend", "sklearn")
SECTIONS = (
    "== Classify",
    "held-out confusion matrix from its model card (rows = predicted, columns = true class)",
    "== Detect",
    "== Segment",
    "== Explain",
    "== StreamClassify",
    "== StreamDetect",
    "== V2 ModelInfer",
)


def test_demo_runs_every_rpc_on_the_bundled_models(tmp_path):
    for name in BLOCKED:
        package = tmp_path / "blocked" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(
            f"raise ImportError('{name} is not a serving dependency (blocked by test_demo)')\n"
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocked"), str(REPO_ROOT)])}
    started = time.time() - 1.0  # file modification times can be a little coarse
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    out = done.stdout
    assert done.returncode == 0, f"demo failed:\n{out[-4000:]}\n{done.stderr[-4000:]}"
    missing = [section for section in SECTIONS if section not in out]
    assert not missing, f"no output for {missing}:\n{out[-4000:]}"
    assert "skipped" not in out and "FAILED" not in out + done.stderr
    assert "convserve_requests_total = " in out and "exit code 0" in out
    console = re.search(r"browser console: (http://127\.0\.0\.1:\d+/)", out)
    assert console, out[-2000:]  # the finite run prints the console's URL (make console keeps it up)
    assert "POST /v1/models/lenet5/classify (digit_7.png) -> 7 " in out
    output = REPO_ROOT / "demo-output"
    for pattern, least in (("scene_*.detect.jpg", 3), ("scene_*.segment.png", 3), ("*.cam.jpg", 4)):
        written = [f for f in output.glob(pattern) if f.stat().st_mtime >= started]  # this run's, not leftovers
        assert len(written) >= least, f"{pattern}: {len(written)} written by this run, expected >= {least}"
        assert all(cv2.imread(str(f)) is not None for f in written), f"{pattern}: a file does not decode"
