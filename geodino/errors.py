"""geodino's exceptions for anticipated failures, and the one way the command line reports them.

Every failure a user can cause and fix (a bad input, a model that does not fit, a store from another run, a
scheduler that does not answer) raises a :class:`GeodinoError` subclass whose message names the file, what was
expected and what was found. The ones about values also subclass ``ValueError`` (so code that caught
``ValueError`` before keeps working); output and scheduler failures subclass ``OSError`` / ``ConnectionError``.

The CLI turns such an error (or a ``ValueError``, ``FileNotFoundError``... raised by code outside geodino) into one
or two lines on stderr and exit status 2 (:func:`report`); anything else is a bug and keeps its traceback when
``--debug`` (or ``GEODINO_DEBUG=1``) is set, else prints one line asking for ``--debug``. Ctrl-C exits with 130.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "GeodinoError",
    "IncompleteStoreError",
    "InputError",
    "ModelError",
    "OutputError",
    "SchedulerError",
    "StoreMismatchError",
    "cli_errors",
    "report",
]


class GeodinoError(Exception):
    """Base of every anticipated geodino failure: the message is meant for the user, as is."""


class InputError(GeodinoError, ValueError):
    """A bad input or option value: the message names the flag or file, what was expected and what was found."""


class ModelError(GeodinoError, ValueError):
    """A model that cannot be used as asked (missing weights, unknown name, unsupported option)."""


class StoreMismatchError(GeodinoError, ValueError):
    """An existing store was made by another run (other inputs, model or options), or is not a geodino store."""


class IncompleteStoreError(GeodinoError, ValueError):
    """A store whose run did not finish: some chunks were never written."""

    def __init__(self, message: str, *, missing: int = 0, total: int = 0):
        super().__init__(message)
        self.missing = missing
        self.total = total


class OutputError(GeodinoError, OSError):
    """The output cannot be written where asked (a parent that is a file, no permission, a full disk)."""


class SchedulerError(GeodinoError, ConnectionError):
    """The Dask scheduler cannot be reached or started."""


#: Exit status of an anticipated failure, and of an interrupted run (128 + SIGINT, as shells report it).
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

# Exceptions raised by libraries for conditions the user caused and can fix (not geodino bugs).
_ANTICIPATED: tuple[type[BaseException], ...] = (
    GeodinoError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def debug_enabled() -> bool:
    """True when tracebacks were asked for (``--debug`` sets ``GEODINO_DEBUG=1``)."""
    return os.environ.get("GEODINO_DEBUG", "") not in ("", "0")


def _one_line(err: BaseException) -> str:
    """The error's message on one line (OSError's ``[Errno 20] ...`` kept; empty messages named by type)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def report(err: BaseException, *, hint: str | None = None) -> int:
    """Print an error for a user on stderr and return the exit status.

    Args:
        err: The exception.
        hint: An optional second line (e.g. how to resume an interrupted run).

    Returns:
        2 for anticipated failures, 130 for Ctrl-C, 1 for anything else (a bug: ``--debug`` shows its traceback).
    """
    if isinstance(err, KeyboardInterrupt):
        print(f"interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(err, _ANTICIPATED):
        print(f"error: {_one_line(err)}", file=sys.stderr)
        if hint:
            print(hint, file=sys.stderr)
        return EXIT_ERROR
    print(
        f"error: unexpected {type(err).__name__}: {_one_line(err)} (run with --debug for the traceback)",
        file=sys.stderr,
    )
    return 1


def show_warning(message: Any, category: type[Warning], *_args: Any, **_kwargs: Any) -> None:
    """Warnings on one line, without the Python source line Python prints under them."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


F = TypeVar("F", bound=Callable[..., Any])


def cli_errors(hint: Callable[[BaseException], str | None] | None = None) -> Callable[[F], F]:
    """Decorate a CLI command: anticipated failures -> :func:`report` and ``SystemExit``; one-line warnings.

    Args:
        hint: Called with the exception to add a second line (e.g. "resume with --resume"), or None.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with warnings.catch_warnings():
                warnings.showwarning = show_warning
                try:
                    return func(*args, **kwargs)
                except (Exception, KeyboardInterrupt) as err:
                    if debug_enabled() or type(err).__module__.startswith(("click", "typer")):
                        raise  # --debug, or typer.Exit / click's usage errors (click reports those itself)
                    code = report(err, hint=hint(err) if hint else None)
                    raise SystemExit(code) from None

        return wrapper  # type: ignore[return-value]

    return decorate
