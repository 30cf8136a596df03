"""The `convserve` command: one entry point, subcommands from the service and the export side.

Lives outside both packages so the server never imports export/ (and so torch): export
subcommands are only imported when they are asked for.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommands served by other modules, imported only when asked for (export/ needs torch):
# command -> (module with main(argv), whether main expects the command word itself in argv).
DELEGATED = {
    "export": ("export.cli", True),
    "models": ("export.cli", True),
    "train": ("export.cli", True),
    "optimize": ("export.optimize_cli", False),
    "loadtest": ("loadtest.cli", False),
}
DELEGATED_HELP = {
    "export": "export a zoo architecture, your own nn.Module or a TorchScript file to a model version",
    "models": "rebuild the bundled models of model_repo/",
    "train": "train a model on your own data (train classifier: fine-tune on a folder of images)",
    "optimize": "write an INT8, FP16 or pre-optimised copy of a model version as a new version",
    "loadtest": "load-test a running server",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module_name, keeps_command = DELEGATED[argv[0]]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            extra = "export" if module_name.startswith("export") else "cpu"
            print(
                f"convserve {argv[0]}: needs the {extra} extra (pip install 'convserve[{extra}]'): {exc}",
                file=sys.stderr,
            )
            return 2
        return int(module.main(argv if keeps_command else argv[1:]) or 0)
    parser = argparse.ArgumentParser(
        prog="convserve",
        description="Vision inference server on ONNX Runtime.",
        epilog="every command takes --help",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    from service.cli import add_serve_parser
    from service.config_init import add_config_parser

    add_serve_parser(subparsers)
    add_config_parser(subparsers)
    for command, text in DELEGATED_HELP.items():  # listed here, parsed by their own modules (above)
        subparsers.add_parser(command, help=text, add_help=False)
    add_client_parsers = None
    if argv[:1] != ["serve"]:  # the client imports OpenCV; the server sets its pixel limit first
        try:
            from service.client.cli import add_client_parsers
        except ImportError:
            pass
    if add_client_parsers is not None:
        add_client_parsers(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
