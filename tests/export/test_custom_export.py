"""`convserve export --module/--torchscript/--exported-program`: a model defined only by the user, served."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from entrypoint import main
from service.client.vision_client import VisionClient
from service.config import load_model_config
from testkit import ServerThread, test_settings

USER_MODULE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """Defined only here: nothing in convserve knows it."""

    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 8 * 8, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def build():
    return TinyNet(classes=3)
'''


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "user_code" / "my_net.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(USER_MODULE))
    labels = tmp_path / "labels.txt"
    labels.write_text("apple\npear\nplum\n")
    return path, labels


def _classify(repo, name):
    server = ServerThread(test_settings(repo)).start()
    try:
        image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        with VisionClient(server.address) as client:
            return client.classify([image], name).results[0]
    finally:
        server.stop()


def test_custom_module_exports_serves_and_classifies(tmp_path, user_module, capsys):
    path, labels = user_module
    repo = tmp_path / "repo"
    argv = ["export", "--module", f"{path}:build", "--input-shape", "3,16,16", "--labels", str(labels)]
    argv += ["--repo", str(repo), "--name", "mynet", "--mean", "0.5", "--std", "0.25"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "guessed task: classification" in printed
    config = load_model_config(repo / "mynet" / "config.yaml")
    assert config.preprocessing.size == (16, 16) and config.preprocessing.mean == (0.5,)
    assert (repo / "mynet" / "1" / "model_card.json").is_file()
    result = _classify(repo, "mynet")
    assert result.top.label in {"apple", "pear", "plum"} and len(result.predictions) == 3
    assert abs(sum(p.score for p in result.predictions) - 1.0) < 1e-4  # softmax over the three logits


def test_torchscript_and_exported_program_files_export(tmp_path, user_module):
    import importlib.util

    path, _ = user_module
    spec = importlib.util.spec_from_file_location("my_net_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build().eval()
    example = torch.rand(2, 3, 16, 16)
    torch.jit.save(torch.jit.trace(model, example), tmp_path / "net.pt")
    batch = {0: torch.export.Dim.DYNAMIC}  # a program captured at batch 2 would refuse any other batch
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=(batch,)), tmp_path / "net.pt2")
    repo = tmp_path / "repo"
    assert (
        main(["export", "--torchscript", str(tmp_path / "net.pt"), "--input-shape", "3,16,16", "--repo", str(repo)])
        == 0
    )
    assert (
        main(
            [
                "export",
                "--exported-program",
                str(tmp_path / "net.pt2"),
                "--input-shape",
                "3,16,16",
                "--repo",
                str(repo),
                "--name",
                "net_ep",
            ]
        )
        == 0
    )
    for name in ("net", "net_ep"):
        assert len(_classify(repo, name).predictions) == 3


def test_refusals_write_nothing(tmp_path, user_module, capsys):
    path, labels = user_module
    repo = tmp_path / "repo"
    wrong = tmp_path / "two.txt"
    wrong.write_text("a\nb\n")
    assert (
        main(
            [
                "export",
                "--module",
                f"{path}:build",
                "--input-shape",
                "3,16,16",
                "--labels",
                str(wrong),
                "--repo",
                str(repo),
            ]
        )
        == 1
    )
    assert "2 labels given but the model returns 3 scores" in capsys.readouterr().err
    assert main(["export", "--module", f"{path}:missing", "--input-shape", "3,16,16", "--repo", str(repo)]) == 1
    assert "has no 'missing'" in capsys.readouterr().err
    assert main(["export", "--module", f"{path}:build", "--input-shape", "3,20,16", "--repo", str(repo)]) == 1
    assert "does not accept input" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('no GPU here')\n")
    assert main(["export", "--module", f"{broken}:build", "--input-shape", "3,16,16", "--repo", str(repo)]) == 1
    assert "importing" in (err := capsys.readouterr().err) and "RuntimeError: no GPU here" in err
    assert "Traceback" not in err
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_net_fixed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fixed = tmp_path / "fixed.pt2"  # captured without a dynamic batch axis: only batch 1 passes its guards
    torch.export.save(torch.export.export(module.build().eval(), (torch.zeros(1, 3, 16, 16),)), fixed)
    assert main(["export", "--exported-program", str(fixed), "--input-shape", "3,16,16", "--repo", str(repo)]) == 1
    assert "capture the program with a dynamic batch axis" in capsys.readouterr().err
    assert not repo.exists()
