"""`make loadtest`: serve the bundled model repository and load-test one model for a few seconds.

Shows both load modes of `convserve loadtest`: closed loop with V2 tensors, then open loop
(Poisson arrivals) with JPEGs through the vision API. Needs only the serving dependencies; the
plot is written when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.server import REPO_ROOT, served_models
from service.config import load_model_config

PREFERRED = ("lenet5", "gap_cnn")


def pick_model(repo: Path) -> str:
    """A classification model of the repository, the digits model first."""
    names = [p.name for p in sorted(repo.iterdir()) if (p / "config.yaml").is_file()]
    for name in (*PREFERRED, *names):
        if name in names and load_model_config(repo / name / "config.yaml").task == "classification":
            return name
    raise SystemExit(f"no classification model in {repo}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", type=Path, default=REPO_ROOT / "model_repo")
    parser.add_argument("--model", default="", help="default: the digits model, else the first classifier")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--plot", type=Path, default=Path(tempfile.gettempdir()) / "convserve-loadtest-demo.png")
    args = parser.parse_args(argv)
    model = args.model or pick_model(args.model_repo)
    server = served_models(args.model_repo)
    try:
        common = [
            sys.executable,
            "-m",
            "loadtest",
            "--host",
            server.address,
            "--model",
            model,
            "--duration",
            str(args.seconds),
            "--warmup",
            "1",
        ]
        print(f"== closed loop, V2 tensors, concurrency 8 ({model})", flush=True)
        subprocess.run([*common, "--concurrency", "8"], cwd=REPO_ROOT, check=True)
        print(f"\n== open loop, 100 req/s Poisson, JPEG through the vision API ({model})", flush=True)
        plot = ["--plot", str(args.plot)] if _has_matplotlib() else []
        subprocess.run(
            [*common, "--rate", "100", "--api", "vision", "--payload", "jpeg", *plot], cwd=REPO_ROOT, check=True
        )
        if plot:
            print(f"\nplot: {args.plot}")
    finally:
        server.stop()
    return 0


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
