"""The README's curl examples, run as written against a real server (only the port is changed).

The block after `<!-- http-examples -->` is read from README.md; each command (backslash
continuations joined) runs in bash from the repository root with `localhost:8000` pointed at the
test server's loopback port. Every one must exit 0 (`curl -f`: any HTTP error fails) and print
what it promises: JSON where JSON is answered.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from testkit import REPO_ROOT, ServerThread, copy_bundled_model, test_settings


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- http-examples -->\s*```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no http-examples block"
    return [c.strip() for c in block.group(1).replace("\\\n", " ").splitlines() if c.strip()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("readme") / "repo"
    for name in ("lenet5", "yolo_grid"):
        copy_bundled_model(name, repo)
    server = ServerThread(test_settings(repo, http_port=0)).start()
    yield server
    server.stop()


def test_readme_has_the_examples():
    commands = readme_commands()
    assert len(commands) >= 6 and all("localhost:8000" in c for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_curl_example(server, command):
    assert shutil.which("curl"), "curl is needed for the README examples"
    command = command.replace("localhost:8000", f"127.0.0.1:{server.running.http_port}")
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    out = done.stdout.strip()
    if out == "ready":
        return
    document = json.loads(out)
    assert document
    if "/infer" in command:
        (output,) = document["outputs"]
        assert output["datatype"] == "BYTES" and output["shape"] == [1, 3]
    if "/classify" in command:
        assert document["predictions"][0]["label"] == "7"
