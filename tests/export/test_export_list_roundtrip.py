"""Every architecture `convserve export --list` offers round-trips: export -> parity gate -> the
server's own load (config validation, ONNX Runtime session, signature and graph checks, warm-up).

Untrained weights (torch's init under a fixed seed): what is checked is that the export, its
config and the server agree, not accuracy. Each version is deleted after its check (the VGGs
are over 500 MB each).
"""

from __future__ import annotations

import shutil

import pytest

from entrypoint import main
from export.models.registry import list_models
from service.graph_checks import warm_up_checked
from service.repository import check_signature, find_config, scan_model
from service.runtime import ModelRuntime


def test_the_list_is_what_the_registry_has(capsys):
    assert main(["export", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert listed == list_models() and {"fcn8s", "fcn16s", "fcn32s", "lenet5", "yolo_grid"} <= set(listed)


@pytest.mark.parametrize("arch", list_models())
def test_every_listed_architecture_exports_and_loads_in_the_server(arch, tmp_path, capsys):
    repo = tmp_path / "repo"
    try:
        assert main(["export", arch, "--repo", str(repo)]) == 0, capsys.readouterr().err
        assert "parity max abs diff" in capsys.readouterr().out
        source = scan_model(repo / arch)  # the config as the server reads and validates it
        assert source.versions == (1,)
        runtime = ModelRuntime(source.model_path(1), source.config, ("cpu",), False)
        check_signature(source, 1, runtime.signature)
        assert warm_up_checked(str(find_config(source.directory)), runtime, source.labels) > 0
        assert source.config.task in ("classification", "detection", "segmentation")
    finally:
        shutil.rmtree(repo, ignore_errors=True)
