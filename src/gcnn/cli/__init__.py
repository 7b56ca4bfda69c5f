"""The ``gcnn`` command line.

Each subcommand lives in its own module of this package and defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Argument parsing happens only in this package; the library never reads ``sys.argv``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings
from typing import Sequence

from gcnn.errors import GcnnError, GcnnWarning, describe_error, render

# name on the command line -> module in this package
COMMANDS = {
    "archs": "archs",
    "prepare": "prepare",
    "train": "train",
    "eval": "evaluate",
    "score": "score",
    "rescore": "rescore",
    "generate": "generate",
    "next": "next",
    "export": "export",
    "import-fairseq": "import_fairseq",
    "demo": "demo",
    "serve": "serve",
}


def build_parser() -> argparse.ArgumentParser:
    from gcnn.version import __version__

    parser = argparse.ArgumentParser(
        prog="gcnn",
        description="Language modeling with Gated Convolutional Networks (Dauphin et al., 2017).",
    )
    parser.add_argument("--version", action="version", version=f"gcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"gcnn.cli.{module_name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _name=name, _flags=_flags(p))
    return parser


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Library parameter name -> this command's option for it: its long flag, or a positional's metavar."""
    flags = {}
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help"):
            continue
        long = [o for o in action.option_strings if o.startswith("--")]
        flags.setdefault(action.dest, long[0] if long else (action.metavar or action.dest.upper()))
    return flags


def message(exc: GcnnError, flags: dict[str, str]) -> str:
    """An error's message in the command line's words: the library's parameter names as this command's flags."""
    return render(exc.template, lambda name: flags.get(name, name))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Errors a user can cause are one line on stderr and exit status 2: gcnn's own errors (in the
    command's flags) and file-system errors (the path and the cause). A closed output pipe (``gcnn score | head``)
    ends the command quietly with 141, as it would a Unix tool; Ctrl-C with 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"gcnn {args._name}"
    from gcnn.allocator import retain_freed_memory

    retain_freed_memory()  # large tensors reuse mapped pages (GCNN_RETAIN_MEMORY=0 keeps the default allocator)
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, category, *rest: _warn(name, message, category, rest)
        try:
            return int(args._run(args) or 0)
        except GcnnError as exc:
            print(f"{name}: error: {message(exc, args._flags)}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            _silence_stdout()
            return 128 + signal.SIGPIPE
        except OSError as exc:
            print(f"{name}: error: {describe_error(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return 130


def _warn(name: str, message: Warning | str, category: type[Warning], rest: tuple) -> None:
    if issubclass(category, GcnnWarning):
        print(f"{name}: warning: {message}", file=sys.stderr)
    else:
        warnings._showwarnmsg_impl(warnings.WarningMessage(message, category, *rest[:2]))  # type: ignore[attr-defined]


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of a closed pipe does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
