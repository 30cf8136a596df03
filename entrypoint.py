"""The `convserve` command: one entry point, subcommands from the service and the export side.

Lives outside both packages so the server never imports export/ (and so torch): export
subcommands are only imported when they are asked for.
"""

from __future__ import annotations

import argparse
import sys

EXPORT_COMMANDS = ("export", "models", "train", "optimize")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXPORT_COMMANDS:
        try:
            from export.cli import main as export_main
        except ImportError as exc:
            print(f"convserve {argv[0]}: needs the export extra (pip install 'convserve[export]'): {exc}", file=sys.stderr)
            return 2
        return export_main(argv)
    parser = argparse.ArgumentParser(prog="convserve", description="Vision inference server on ONNX Runtime.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    from service.cli import add_serve_parser
    add_serve_parser(subparsers)
    try:
        from service.client.cli import add_client_parsers
    except ImportError:
        add_client_parsers = None
    if add_client_parsers is not None:
        add_client_parsers(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
