"""What this host's kernel offers (SCTP, MPTCP): pure probes, for the product and the lab alike."""

from __future__ import annotations

import socket
from pathlib import Path

IPPROTO_SCTP = getattr(socket, "IPPROTO_SCTP", 132)
IPPROTO_MPTCP = 262


def _socket_error(proto: int) -> OSError | None:
    """Why a stream socket of this protocol cannot be opened (None: it can)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto).close()
    except OSError as exc:
        return exc
    return None


def sctp_support() -> tuple[bool, str]:
    """(available, why not). Kernel SCTP must exist; the data path uses the stdlib socket module."""
    if (exc := _socket_error(IPPROTO_SCTP)) is not None:
        return False, f"this kernel has no SCTP ({exc.strerror}); try `modprobe sctp`"
    return True, ""


def mptcp_support() -> tuple[bool, str]:
    """(available and enabled, why not)."""
    try:
        enabled = Path("/proc/sys/net/mptcp/enabled").read_text().strip()
    except OSError:
        return False, "this kernel has no MPTCP (no net.mptcp.enabled sysctl)"
    if enabled != "1":
        return False, "MPTCP is disabled (net.mptcp.enabled=0; turn it on: sysctl -w net.mptcp.enabled=1)"
    if (exc := _socket_error(IPPROTO_MPTCP)) is not None:
        return False, f"cannot open an MPTCP socket: {exc.strerror}"
    return True, ""
