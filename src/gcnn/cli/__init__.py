"""The ``gcnn`` command line.

Each subcommand lives in its own module of this package and defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Argument parsing happens only in this package; the library never reads ``sys.argv``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from gcnn.errors import GcnnError

# name on the command line -> module in this package
COMMANDS = {
    "archs": "archs",
    "prepare": "prepare",
    "train": "train",
    "eval": "evaluate",
    "score": "score",
    "generate": "generate",
    "export": "export",
    "import-fairseq": "import_fairseq",
    "demo": "demo",
}


def _load_commands():
    loaded = {}
    for name, module in COMMANDS.items():
        try:
            loaded[name] = importlib.import_module(f"gcnn.cli.{module}")
        except ModuleNotFoundError as exc:  # a subcommand not written yet
            if exc.name != f"gcnn.cli.{module}":
                raise
    return loaded


def build_parser() -> argparse.ArgumentParser:
    from gcnn import __version__

    parser = argparse.ArgumentParser(
        prog="gcnn",
        description="Language modeling with Gated Convolutional Networks (Dauphin et al., 2017).",
    )
    parser.add_argument("--version", action="version", version=f"gcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _load_commands().items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except GcnnError as exc:
        print(f"gcnn {args._name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gcnn {args._name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
