"""The container images' recipes: hadolint-clean, and shaped the way the deployment relies on.

No image is built here (that needs a Docker daemon and the network); instead every property the
Kubernetes manifests and deploy/README.md depend on is read from the Dockerfiles: multi-stage with
only the venv copied into the runtime stage, the serving extras only (no torch), a fixed non-root
uid, ports 8000/8001/8002, a HEALTHCHECK through `convserve health`, `convserve serve` as ENTRYPOINT,
and a Dockerfile-specific .dockerignore that lets through everything the COPY lines need.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from deploy_tools import DEPLOY_DIR, IMAGE_UID, REPO_ROOT
from dockerfile_reader import Stage, pip_install_commands, read_stages

DOCKER_DIR = DEPLOY_DIR / "docker"
CPU = DOCKER_DIR / "Dockerfile"
GPU = DOCKER_DIR / "Dockerfile.gpu"
BOTH = pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=["cpu", "gpu"])

# What each image must install and how its server is configured.
EXPECTED = {
    CPU: {"extra": "cpu", "providers": "cpu", "base": r"python:3\.11-slim(-[a-z]+)?"},
    GPU: {
        "extra": "gpu",
        "providers": "cuda,cpu",
        "base": r"nvidia/cuda:12\.\d+\.\d+-cudnn[0-9]*-runtime-ubuntu\d+\.\d+",
    },
}


def runtime_stage(dockerfile: Path) -> Stage:
    return read_stages(dockerfile)[-1]


def run_hadolint(hadolint: str, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    # --failure-threshold style: every finding fails, down to the lowest severity.
    return subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


@BOTH
def test_hadolint_reports_nothing(hadolint: str, dockerfile: Path) -> None:
    result = run_hadolint(hadolint, dockerfile)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_would_catch_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    """Guards the test above: the linter really runs and fails on known violations."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n")
    result = run_hadolint(hadolint, bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015", "DL3025"):
        assert rule in result.stdout, result.stdout


@BOTH
def test_every_hadolint_ignore_is_justified(dockerfile: Path) -> None:
    """An inline `# hadolint ignore=` needs a comment right above it saying why."""
    lines = dockerfile.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore", line):
            above = lines[index - 1].strip() if index else ""
            assert above.startswith("#") and "hadolint" not in above and len(above.split()) >= 5, (
                f"{dockerfile.name}:{index + 1}: `{line.strip()}` has no justification comment above it"
            )


@BOTH
def test_multi_stage_with_one_pinned_base(dockerfile: Path) -> None:
    stages = read_stages(dockerfile)
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    runtime = stages[-1]
    assert re.fullmatch(EXPECTED[dockerfile]["base"], runtime.base), runtime.base
    assert ":" in runtime.base and not runtime.base.endswith(":latest")
    # The venv's bin/python is a symlink to the builder's interpreter: same base, same path.
    builder = next(s for s in stages if s.name == "builder")
    assert builder.base == runtime.base


@BOTH
def test_runtime_stage_copies_only_the_venv_and_the_models(dockerfile: Path) -> None:
    runtime = runtime_stage(dockerfile)
    from_builder = [c.args.split() for c in runtime.all("COPY") if "--from=" in c.args]
    assert [words[-2:] for words in from_builder] == [["/opt/venv", "/opt/venv"]]
    from_context = [c.args.split() for c in runtime.all("COPY") if "--from=" not in c.args]
    assert [words[-2:] for words in from_context] == [["model_repo/", "/models/"]]
    assert runtime.env()["CONVSERVE_MODEL_REPO"] == "/models"
    assert not any("pip" in r.args for r in runtime.all("RUN")), "install in the builder, copy the venv"


@BOTH
def test_installs_the_serving_extra_and_never_torch(dockerfile: Path) -> None:
    extra = EXPECTED[dockerfile]["extra"]
    installs = [args for stage in read_stages(dockerfile) for args in pip_install_commands(stage)]
    assert len(installs) == 1, installs
    targets = [word for word in installs[0] if not word.startswith("-")]
    assert targets == [f"/src[{extra}]"], targets
    assert not any("torch" in word for word in installs[0])


def test_cpu_and_gpu_extras_exist_and_serving_deps_exclude_torch() -> None:
    """The extras the images install are the ones pyproject.toml defines; torch is not among them."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(dep.startswith("onnxruntime") and "gpu" not in dep for dep in extras["cpu"])
    assert any(dep.startswith("onnxruntime-gpu") for dep in extras["gpu"])
    for dep in project["dependencies"] + extras["cpu"] + extras["gpu"]:
        assert not re.match(r"(torch|torchvision)\b", dep), dep
    assert "convserve" in project["scripts"], "ENTRYPOINT runs the `convserve` console script"


@BOTH
def test_runs_as_fixed_non_root_uid(dockerfile: Path) -> None:
    users = runtime_stage(dockerfile).all("USER")
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].args.split(":")[0]
    assert user == str(IMAGE_UID), f"USER {users[-1].args}: use the numeric uid {IMAGE_UID}"


@BOTH
def test_ports_healthcheck_and_entrypoint(dockerfile: Path) -> None:
    runtime = runtime_stage(dockerfile)
    exposed = {port for e in runtime.all("EXPOSE") for port in e.args.split()}
    assert exposed == {"8000", "8001", "8002"}
    env = runtime.env()
    ports = (env["CONVSERVE_PORT"], env["CONVSERVE_METRICS_PORT"], env["CONVSERVE_HTTP_PORT"])
    assert ports == ("8001", "8002", "8000")
    assert env["CONVSERVE_PROVIDERS"] == EXPECTED[dockerfile]["providers"]

    checks = runtime.all("HEALTHCHECK")
    assert len(checks) == 1
    command = " ".join(checks[0].exec_form() or [])
    assert "convserve health --host" in command and "127.0.0.1:${CONVSERVE_PORT:-8001}" in command
    assert re.search(r"--start-period=\d+s", checks[0].args), "model loading needs a start period"

    entrypoints = runtime.all("ENTRYPOINT")
    assert [e.exec_form() for e in entrypoints] == [["convserve", "serve"]], "exec form, so SIGTERM reaches the server"
    assert runtime.all("CMD") == []


def ignore_rules(dockerfile: Path) -> list[str]:
    path = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert path.is_file(), f"{path.name} missing (BuildKit reads <Dockerfile>.dockerignore next to it)"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@BOTH
def test_dockerignore_allowlists_exactly_what_is_copied(dockerfile: Path) -> None:
    rules = ignore_rules(dockerfile)
    assert rules[0] == "*", "allowlist style: exclude everything, then re-include"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    sources = set()
    for stage in read_stages(dockerfile):
        for copy in stage.all("COPY"):
            if "--from=" not in copy.args:
                sources.update(word.rstrip("/") for word in copy.args.split()[:-1] if not word.startswith("--"))
    assert sources == allowed, f"COPY sources {sorted(sources)} vs re-included {sorted(allowed)}"
    assert ".venv" not in allowed and ".git" not in allowed


@BOTH
def test_copied_paths_exist_in_the_repository(dockerfile: Path) -> None:
    """Every file the image copies from the build context is there (else `docker build` fails)."""
    missing = []
    for stage in read_stages(dockerfile):
        for copy in stage.all("COPY"):
            if "--from=" not in copy.args:
                missing += [
                    w for w in copy.args.split()[:-1] if not w.startswith("--") and not (REPO_ROOT / w).exists()
                ]
    assert not missing, f"{dockerfile.name} copies paths that do not exist at the repository root: {missing}"
