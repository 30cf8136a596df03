"""How each bundled model in model_repo/ is rebuilt: `convserve models` (`make models`).

Every model of model_repo/ has a recipe here: the commands that train and export its version 1
(each ends in the common writer, export/writer.py), the evaluation that writes its README, and the
cost of the training on the 2-core machine its card was made on. After version 1 is rebuilt, each
version derived from it (the INT8 version 2) is stale, since its card pins the fp32 file's sha256;
it is removed and made again by the command its own card records (`reproduce`), so it keeps its
number.

    convserve models --list                  # the plan: what would be rebuilt or skipped, and why
    convserve models                         # rebuild what fits --max-minutes (default 30); say what it skips
    convserve models --only yolo_grid        # rebuild this one whatever it costs (repeatable)

A recipe whose cost exceeds --max-minutes is skipped with its reason and its command printed; so
is a recipe whose scripts only write model_repo/ when another --repo is asked for.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BUNDLED_REPO = Path("model_repo")


@dataclass(frozen=True)
class Recipe:
    """`commands` (argument lists for `python -m`, with {repo} and {runs} filled in) rebuild version 1.

    `minutes` is the training cost recorded in the model's card (wall-clock on 2 shared cores);
    `any_repo` says whether the scripts can write into a repository other than model_repo/.
    """

    name: str
    commands: tuple[tuple[str, ...], ...]
    minutes: float
    any_repo: bool = True


def _digits(name: str) -> Recipe:
    return Recipe(
        name,
        (("export.train.classifier", "--only", name, "--repo", "{repo}", "--runs", "{runs}", "--no-progress"),),
        minutes=1,
    )


_DETECTOR_PHASES = (  # model_repo/yolo_grid/1/model_card.json: training.runs (15,405 steps, 170 min)
    ("--seed", "0", "--lr", "0.003", "--warmup", "200", "--minutes", "40", "--epochs", "30"),
    ("--resume", "--seed", "100", "--lr", "0.002", "--warmup", "100", "--minutes", "50", "--epochs", "40"),
    ("--resume", "--seed", "200", "--lr", "0.001", "--warmup", "50", "--minutes", "22", "--epochs", "30"),
    ("--resume", "--seed", "300", "--lr", "0.0008", "--warmup", "50", "--minutes", "45", "--epochs", "60"),
    (
        "--resume",
        "--seed",
        "400",
        "--lr",
        "0.0006",
        "--warmup",
        "50",
        "--minutes",
        "28",
        "--epochs",
        "40",
        "--recolour",
        "0.4",
        "--threads",
        "2",
    ),
)

RECIPES: dict[str, Recipe] = {
    **{name: _digits(name) for name in ("lenet5", "simple_cnn", "bn_cnn")},
    "gap_cnn": Recipe("gap_cnn", (("export.train.gap_cnn", "--repo", "{repo}"),), minutes=17),
    "fcn8s": Recipe(
        "fcn8s",
        (
            ("export.train.segmenter", "--variant", "fcn8s", "--widths", "16,24,48,64,96", "--convs", "1,2,2,2,2"),
            ("export.evaluate.segmenter",),
        ),
        minutes=110,
        any_repo=False,
    ),
    "yolo_grid": Recipe(
        "yolo_grid",
        (
            *(("export.train.detector", *phase) for phase in _DETECTOR_PHASES),
            ("export.evaluate.detector",),
        ),
        minutes=170,
        any_repo=False,
    ),
}


@dataclass(frozen=True)
class Step:
    """One model's fate: rebuilt by `commands`, or skipped for `reason`."""

    name: str
    commands: tuple[tuple[str, ...], ...]
    reason: str | None  # None: rebuilt


def plan(repo: Path, runs: Path, only: list[str] | None, max_minutes: float) -> list[Step]:
    """What `convserve models` does for each bundled model; `only` forces those and skips the rest."""
    steps = []
    for name, recipe in RECIPES.items():
        commands = tuple(tuple(a.format(repo=repo, runs=runs) for a in command) for command in recipe.commands)
        if only is not None and name not in only:
            reason = "not asked for (--only)"
        elif not recipe.any_repo and Path(repo).resolve() != BUNDLED_REPO.resolve():
            reason = f"its scripts write {BUNDLED_REPO}/ only (asked for {repo})"
        elif only is None and recipe.minutes > max_minutes:
            reason = (
                f"training takes ~{recipe.minutes:g} min on 2 cores, over --max-minutes {max_minutes:g}; "
                f"rebuild it with `convserve models --only {name}`"
            )
        else:
            reason = None
        steps.append(Step(name, commands, reason))
    return steps


def derived_versions(model_dir: Path, source: int = 1) -> dict[int, str]:
    """Versions made from `source` by `convserve optimize`, with the command each card records."""
    found = {}
    for card_path in sorted(model_dir.glob("*/model_card.json")):
        card = json.loads(card_path.read_text())
        if card.get("derived_from", {}).get("version") == source and card.get("reproduce"):
            found[int(card_path.parent.name)] = card["reproduce"]
    return found


def optimize_command(reproduce: str, repo: Path) -> tuple[str, ...]:
    """`convserve optimize ...` from a card, as arguments of `python -m export.optimize_cli`, into `repo`."""
    words = reproduce.split()
    if words[:2] != ["convserve", "optimize"]:
        raise ValueError(f"unexpected reproduce line in a derived card: {reproduce!r}")
    args = words[2:]
    if "--repo" in args:
        args[args.index("--repo") + 1] = str(repo)
    return ("export.optimize_cli", *args)


def describe(step: Step, repo: Path) -> str:
    """The plan line(s) of one model: its commands, then the derived versions they make stale."""
    if step.reason:
        return f"{step.name}: skip: {step.reason}"
    lines = [f"{step.name}: rebuild:"] + [f"    python -m {' '.join(c)}" for c in step.commands]
    for version, reproduce in derived_versions(Path(repo) / step.name).items():
        lines.append(f"    then replace version {version}: python -m {' '.join(optimize_command(reproduce, repo))}")
    return "\n".join(lines)


def rebuild(step: Step, repo: Path) -> None:
    """Run the step's commands, then remake every version derived from version 1 under its number."""
    model_dir = Path(repo) / step.name
    derived = derived_versions(model_dir)
    for command in step.commands:
        subprocess.run([sys.executable, "-m", *command], check=True)
    for version, reproduce in sorted(derived.items()):
        shutil.rmtree(model_dir / str(version))
        subprocess.run([sys.executable, "-m", *optimize_command(reproduce, repo)], check=True)
        if not (model_dir / str(version)).is_dir():
            raise RuntimeError(f"{model_dir}: `{reproduce}` did not write version {version} again")


def run(repo: Path, runs: Path, only: list[str] | None, max_minutes: float, listing: bool) -> int:
    """Print the plan; unless `listing`, carry it out. Returns the exit status."""
    unknown = sorted(set(only or ()) - set(RECIPES))
    if unknown:
        print(
            f"convserve models: unknown model(s) {', '.join(unknown)}; bundled: {', '.join(RECIPES)}", file=sys.stderr
        )
        return 2
    for step in plan(repo, runs, only, max_minutes):
        print(describe(step, repo), flush=True)
        if not listing and step.reason is None:
            rebuild(step, repo)
    return 0
