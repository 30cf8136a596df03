"""Fixtures shared by every test directory; the helpers behind them live in tests/testkit.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit import BUNDLED_REPO, ServerThread, test_settings, write_tiny_model


@pytest.fixture
def tiny_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    write_tiny_model(repo)
    return repo


@pytest.fixture
def tiny_server(tiny_repo):
    server = ServerThread(test_settings(tiny_repo)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bundled_server():
    """The server on the committed model repository (what a fresh clone serves)."""
    server = ServerThread(test_settings(BUNDLED_REPO)).start()
    yield server
    server.stop()
