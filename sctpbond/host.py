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


def _has_net_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 12 & 1)  # CAP_NET_ADMIN is capability 12
    except (OSError, ValueError):
        pass
    return False


def sctp_buffers(wanted: int = 8 << 20) -> tuple[bool, str]:
    """(full-size, detail): whether an SCTP socket of this process gets `wanted`-byte buffers. Without
    CAP_NET_ADMIN, SO_SNDBUF/SO_RCVBUF stop at net.core.wmem_max/rmem_max (x2), and a small send buffer holds
    few frames (docs/sctp-notes.md section 8)."""
    limits = []
    for name in ("wmem_max", "rmem_max"):
        try:
            limits.append(int(Path(f"/proc/sys/net/core/{name}").read_text()))
        except (OSError, ValueError):
            limits.append(0)
    if _has_net_admin():
        return True, f"{wanted >> 20} MiB (CAP_NET_ADMIN lifts net.core.wmem_max/rmem_max)"
    if min(limits) >= wanted:
        return True, f"{wanted >> 20} MiB (net.core.wmem_max={limits[0]}, rmem_max={limits[1]})"
    return False, (f"limited to {2 * limits[0] >> 10}/{2 * limits[1] >> 10} KiB by net.core.wmem_max/rmem_max "
                   f"(smaller frames, less in flight); lift: sysctl -w net.core.wmem_max={wanted} "
                   f"net.core.rmem_max={wanted}")


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
