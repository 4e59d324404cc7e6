"""What the user sees of a failure: one line on stderr and an exit code, for every command (product and lab)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from .errors import SctpbondError

LOG = logging.getLogger("sctpbond")


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"sctpbond: {record.getMessage()}"


def setup_logging(verbose: int, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    LOG.handlers[:] = [handler]
    LOG.propagate = False
    LOG.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)


def _fail(message: str, code: int) -> None:
    click.echo(f"sctpbond: error: {message}", err=True)
    sys.exit(code)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map our errors to one line + exit code; no traceback unless SCTPBOND_DEBUG is set."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SctpbondError as exc:
            if os.environ.get("SCTPBOND_DEBUG"):
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            _fail("output closed (broken pipe)", 1)
        except Exception as exc:  # a bug: still one line, with a hint to get the details
            if os.environ.get("SCTPBOND_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set SCTPBOND_DEBUG=1 for a traceback)", 1)

    return wrapper
