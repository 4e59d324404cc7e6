"""Transports: how one path's frames travel (TCP connections or kernel SCTP associations)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import SctpUnavailableError, UsageError
from ..host import sctp_support
from .base import Channel, Listener

__all__ = ["TRANSPORTS", "Transport", "load", "make_listeners", "resolve", "sctp_support"]

TRANSPORTS = ("auto", "tcp", "sctp")


@dataclass(frozen=True)
class Transport:
    """One transport: how to dial a path and how to listen for them."""

    name: str
    connect: Callable[[tuple[str, int], str | None, float, bool], Channel]  # (remote, local address, timeout, pinned)
    listener: Callable[[Sequence[str], int], Listener]  # (bind addresses, port)


def load(name: str) -> Transport:
    """Transport `name`, imported on first use (the SCTP module only when SCTP is asked for and the kernel has it)."""
    if name == "tcp":
        from . import tcp

        return Transport("tcp", tcp.connect, tcp.TcpListener)
    if name == "sctp":
        ok, why = sctp_support()
        if not ok:
            raise SctpUnavailableError(f"--transport sctp: {why}")
        from . import sctp

        return Transport("sctp", sctp.connect, sctp.SctpListener)
    raise UsageError(f"unknown transport {name!r} (choose from {', '.join(TRANSPORTS)})")


def resolve(name: str) -> list[str]:
    """Transports to try, best first: 'auto' means SCTP where the kernel has it, else TCP (and says so)."""
    if name != "auto":
        load(name)  # fail early with a clear message
        return [name]
    ok, why = sctp_support()
    if ok:
        return ["sctp", "tcp"]
    logging.getLogger("sctpbond").warning(f"kernel SCTP not available ({why}); using TCP, one connection per path")
    return ["tcp"]


def make_listeners(names: Sequence[str], binds: Sequence[str], port: int) -> list[Listener]:
    return [load(n).listener(binds, port) for n in names]
