"""User-facing errors.

Anything a user can cause (a bad option, a damaged file, a corpus that is too short) raises :class:`GcnnError`
with a message that names the option, file or line at fault. The command line prints the message and exits with
status 2 instead of a traceback.

A message names the library's parameters through :func:`option`, e.g. ``f"{option('min_count')} must be >= 1"``:
printed by the library it reads "min_count must be >= 1"; the command line renders the same marker as its own flag
("--min-count must be >= 1"), so the library never speaks in CLI flags and the CLI never rewrites messages by hand.
"""

from __future__ import annotations

import re
from typing import Callable

_MARK = "\x00"
_OPTION = re.compile(f"{_MARK}([A-Za-z_][A-Za-z0-9_.]*)(?:\x01([^\x00]*))?{_MARK}")


def option(name: str, library: str | None = None) -> str:
    """A library parameter named in a message (see the module docstring); ``library`` is how the library spells it
    there, when not by its bare name (``option("overwrite", "overwrite=True")``)."""
    return f"{_MARK}{name}{_MARK}" if library is None else f"{_MARK}{name}\x01{library}{_MARK}"


def render(text: str, spell: Callable[[str], str] | None = None) -> str:
    """``text`` with every :func:`option` marker replaced by ``spell(name)``, or by the library's spelling."""
    def replace(match: re.Match) -> str:
        name, library = match.group(1), match.group(2)
        return spell(name) if spell is not None else (library or name)

    return _OPTION.sub(replace, text)


class GcnnError(Exception):
    """An error caused by the user's input, reported without a traceback by the command line."""

    def __str__(self) -> str:
        return render(self.template)

    @property
    def template(self) -> str:
        """The message with its option markers, for re-raising with more context or rendering with other names."""
        return str(self.args[0]) if self.args else ""


class GcnnWarning(UserWarning):
    """A setting that works but probably does not do what the user meant; the command line prints it as a warning."""


class ConfigError(GcnnError, ValueError):
    """A configuration key that does not exist, or a value of the wrong type or range."""


class DataError(GcnnError):
    """A corpus, vocabulary or prepared-data folder that cannot be used."""


class CheckpointError(GcnnError):
    """A checkpoint or model folder that is missing, damaged or does not match."""


def describe_error(exc: BaseException) -> str:
    """One line for an operating-system or library error: its cause, and the file it concerns where it names one."""
    if isinstance(exc, OSError):
        cause = exc.strerror or str(exc)
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return f"{' -> '.join(names)}: {cause}" if names else cause
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
