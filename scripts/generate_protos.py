"""Regenerate the Python protobuf and gRPC stubs in service/api/ from the .proto files in protos/.

    python scripts/generate_protos.py [--out DIR]      (what `make protos` runs)

Runs grpc_tools.protoc (grpcio-tools 1.81.x, whose generated code targets the protobuf 6.x
runtime that tritonclient also needs), then post-processes the output deterministically, so the
committed stubs are exactly what this script produces and a test can regenerate into a temporary
directory and compare. The generated files are never edited by hand.

Post-processing, and why:
* Imports. protoc writes `from inference import model_config_pb2`, which only works with the
  output directory on sys.path; they become `from service.api.inference import ...`, and the
  module name given to the message classes becomes `service.api.inference.grpc_service_pb2`.
* Descriptor pool. tritonclient registers the very same `inference.*` messages in protobuf's
  default descriptor pool (under the file name "grpc_service.proto"), and protobuf refuses a
  second definition of a symbol, so a process that imports both tritonclient and our stubs (the
  Python client, the tests) would fail at import. Our stubs therefore register in a private pool,
  `service.api.DESCRIPTOR_POOL`; messages, serialisation and gRPC work the same. Server
  reflection must be given that pool.
* `__init__.py` files are written here too, so the freshness check covers them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
DEFAULT_OUT = REPO / "service" / "api"
PACKAGE = "service.api"
GRPC_TOOLS_SERIES = "1.81."
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

ROOT_INIT = '''"""Generated protobuf and gRPC stubs (written by scripts/generate_protos.py; do not edit).

Every message here is registered in DESCRIPTOR_POOL, a private descriptor pool, rather than in
protobuf's default pool: tritonclient registers the same `inference.*` symbols there, and protobuf
refuses duplicate symbols, so both could not be imported into one process otherwise. Pass
DESCRIPTOR_POOL to anything that looks descriptors up by name, such as gRPC server reflection.
"""

from google.protobuf import descriptor_pool as _descriptor_pool

DESCRIPTOR_POOL = _descriptor_pool.DescriptorPool()
'''

PACKAGE_INIT = '"""Generated from protos/{proto_dir}/ by scripts/generate_protos.py; do not edit."""\n'

POOL_CALL = "_descriptor_pool.Default().AddSerializedFile("
POOL_IMPORT = "from google.protobuf import descriptor_pool as _descriptor_pool\n"


class GenerationError(RuntimeError):
    """protoc failed, or its output no longer has the shape the post-processing expects."""


def check_grpc_tools_version() -> str:
    """The installed grpcio-tools version; another series would generate different stubs."""
    version = importlib.metadata.version("grpcio-tools")
    if not version.startswith(GRPC_TOOLS_SERIES):
        raise GenerationError(
            f"grpcio-tools {version} is installed but the stubs are generated with "
            f"{GRPC_TOOLS_SERIES}x (protobuf 6 gencode); install the dev extra"
        )
    return version


def run_protoc(proto_root: Path, out_dir: Path) -> None:
    """Compile every .proto under `proto_root` into `out_dir` (Python, .pyi and gRPC stubs)."""
    from grpc_tools import protoc

    protos = sorted(p.relative_to(proto_root).as_posix() for p in proto_root.rglob("*.proto"))
    if not protos:
        raise GenerationError(f"no .proto files under {proto_root}")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise GenerationError(f"protoc failed on {protos}")


def rewrite_imports(text: str, proto_packages: list[str]) -> str:
    """Make `from <proto package> import x` and module names absolute under `PACKAGE`."""
    alternatives = "|".join(re.escape(p) for p in proto_packages)
    text = re.sub(
        rf"^from ({alternatives})((?:\.\w+)*) import ", rf"from {PACKAGE}.\1\2 import ", text, flags=re.MULTILINE
    )
    text = re.sub(
        rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')(({alternatives})[\w.]*')", rf"\1{PACKAGE}.\2", text
    )
    if re.search(r"^import \w+_pb2", text, flags=re.MULTILINE):
        raise GenerationError("a .proto outside a package directory: its import cannot be rewritten")
    return text


def use_private_pool(text: str, name: str) -> str:
    """Register the file in `service.api.DESCRIPTOR_POOL` instead of the default pool."""
    if text.count(POOL_CALL) != 1 or text.count(POOL_IMPORT) != 1:
        raise GenerationError(f"{name}: unexpected protoc output, cannot redirect the descriptor pool")
    text = text.replace(POOL_IMPORT, f"from {PACKAGE} import DESCRIPTOR_POOL as _api_pool\n")
    return text.replace(POOL_CALL, "_api_pool.AddSerializedFile(")


def post_process(gen_dir: Path, proto_packages: list[str]) -> None:
    """Rewrite every generated file in place; drop gRPC modules of protos without a service."""
    for path in sorted(gen_dir.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path.name.endswith("_pb2_grpc.py") and "def add_" not in text:
            path.unlink()
            continue
        text = rewrite_imports(text, proto_packages)
        if path.name.endswith("_pb2.py"):
            text = use_private_pool(text, path.name)
        path.write_text(text, encoding="utf-8")


def write_init_files(gen_dir: Path) -> None:
    """An __init__.py in the root (defining the pool) and in every generated package directory."""
    (gen_dir / "__init__.py").write_text(ROOT_INIT, encoding="utf-8")
    for directory in sorted(p for p in gen_dir.rglob("*") if p.is_dir()):
        proto_dir = directory.relative_to(gen_dir).as_posix()
        (directory / "__init__.py").write_text(PACKAGE_INIT.format(proto_dir=proto_dir), encoding="utf-8")


def is_generated(path: Path) -> bool:
    """True for a file this script writes (and may therefore delete when it is stale)."""
    return path.name == "__init__.py" or path.name.endswith(GENERATED_SUFFIXES)


def replace_output(gen_dir: Path, out_dir: Path) -> list[Path]:
    """Copy the generated tree into `out_dir`, removing generated files no longer produced.

    Only files `is_generated` recognises are ever deleted, so a wrong --out cannot wipe a tree.
    """
    produced = {p.relative_to(gen_dir) for p in gen_dir.rglob("*") if p.is_file()}
    if out_dir.exists():
        for old in sorted(out_dir.rglob("*"), reverse=True):
            if old.is_file() and is_generated(old) and old.relative_to(out_dir) not in produced:
                old.unlink()
            elif old.is_dir() and old.name == "__pycache__":
                shutil.rmtree(old)
            elif old.is_dir() and not any(old.iterdir()):
                old.rmdir()
    for rel in sorted(produced):
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((gen_dir / rel).read_bytes())
    return sorted(out_dir / rel for rel in produced)


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Generate and post-process all stubs into `out_dir`; returns the files written."""
    check_grpc_tools_version()
    proto_packages = sorted(p.name for p in proto_root.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory(prefix="convserve-protos-") as tmp:
        gen_dir = Path(tmp)
        run_protoc(proto_root, gen_dir)
        post_process(gen_dir, proto_packages)
        write_init_files(gen_dir)
        return replace_output(gen_dir, out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: service/api)")
    args = parser.parse_args(argv)
    try:
        written = generate(args.out.resolve())
    except GenerationError as error:
        print(f"generate_protos: {error}", file=sys.stderr)
        return 1
    print(f"generate_protos: wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
