"""Transports: how one path's frames travel (TCP connections or kernel SCTP associations)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import ModuleType

from ..errors import SctpUnavailableError, UsageError
from ..host import sctp_support

__all__ = ["TRANSPORTS", "load", "make_listeners", "resolve", "sctp_support"]

TRANSPORTS = ("auto", "tcp", "sctp")


def load(name: str) -> ModuleType:
    """The module implementing transport `name` (it has connect() and a Listener class)."""
    if name == "tcp":
        from . import tcp

        return tcp
    if name == "sctp":
        ok, why = sctp_support()
        if not ok:
            raise SctpUnavailableError(f"--transport sctp: {why}")
        from . import sctp

        return sctp
    raise UsageError(f"unknown transport {name!r} (choose from {', '.join(TRANSPORTS)})")


def resolve(name: str) -> list[str]:
    """Transports to try, best first: 'auto' means SCTP where the kernel has it, else TCP (and says so)."""
    if name != "auto":
        load(name)  # fail early with a clear message
        return [name]
    ok, why = sctp_support()
    if ok:
        try:
            load("sctp")
            return ["sctp", "tcp"]
        except (ImportError, UsageError) as exc:
            why = f"SCTP transport unusable: {exc}"
    logging.getLogger("sctpbond").warning(f"kernel SCTP not available ({why}); using TCP, one connection per path")
    return ["tcp"]


def make_listeners(names: Sequence[str], binds: Sequence[str], port: int) -> list:
    return [load(n).Listener(binds, port) for n in names]
