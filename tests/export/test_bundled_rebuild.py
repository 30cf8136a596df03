"""`convserve models`: every bundled model has a rebuild recipe, and the plan says what it skips and why."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from export.cli import main as cli_main
from export.optimize_cli import _parser as optimize_parser
from export.train.bundled import RECIPES, optimize_command, derived_versions, plan

REPO = Path(__file__).resolve().parents[2] / "model_repo"


def test_every_bundled_model_has_a_recipe_whose_modules_exist():
    assert set(RECIPES) == {p.name for p in REPO.iterdir() if (p / "config.yaml").is_file()}
    for recipe in RECIPES.values():
        for command in recipe.commands:
            assert importlib.util.find_spec(command[0]) is not None, command


def test_each_derived_version_is_remade_by_the_command_its_card_records():
    for name in RECIPES:
        derived = derived_versions(REPO / name)
        assert derived, f"{name}: no INT8 version derived from version 1"
        for reproduce in derived.values():
            module, *args = optimize_command(reproduce, Path("/tmp/elsewhere"))
            parsed = optimize_parser().parse_args(args)
            assert module == "export.optimize_cli" and parsed.repo == Path("/tmp/elsewhere") and parsed.version == 1


def test_the_plan_rebuilds_what_fits_and_says_why_it_skips_the_rest(capsys):
    steps = {s.name: s for s in plan(REPO, Path("runs"), None, max_minutes=30)}
    assert all(steps[n].reason is None for n in ("lenet5", "simple_cnn", "bn_cnn", "gap_cnn"))
    assert "over --max-minutes 30" in steps["yolo_grid"].reason and "--only yolo_grid" in steps["yolo_grid"].reason
    forced = {s.name: s.reason for s in plan(REPO, Path("runs"), ["yolo_grid"], max_minutes=30)}
    assert forced["yolo_grid"] is None and forced["lenet5"] == "not asked for (--only)"
    elsewhere = {s.name: s.reason for s in plan(Path("/tmp/other"), Path("runs"), ["fcn8s", "lenet5"], 30)}
    assert "write model_repo/ only" in elsewhere["fcn8s"] and elsewhere["lenet5"] is None
    assert cli_main(["models", "--list", "--repo", str(REPO)]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in RECIPES)
    assert "then replace version 2: python -m export.optimize_cli" in listing
    assert cli_main(["models", "--list", "--only", "resnet18"]) == 2
