"""`sctpbond doctor`: what this host supports (SCTP and its buffers, addresses per interface, MPTCP, the test VM)."""

from __future__ import annotations

import glob
import os
import socket

import click

from .host import mptcp_support, sctp_buffers, sctp_support


def _interfaces() -> list[tuple[str, str, list[str]]]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {link["index"]: (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_OPERSTATE"))
                 for link in ipr.get_links()}
        addrs: dict[int, list[str]] = {}
        for a in ipr.get_addr():
            addrs.setdefault(a["index"], []).append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    return [(name, state, addrs.get(idx, [])) for idx, (name, state) in sorted(names.items())]


def _vm_kernel() -> str:
    images = [p for p in sorted(glob.glob("/boot/vmlinuz-*"))
              if os.path.isdir(f"/lib/modules/{p.split('vmlinuz-', 1)[1]}/kernel/net/sctp")]
    return images[-1] if images else ""


@click.command()
def doctor() -> None:
    """Report what this host supports: kernel SCTP and its buffers, addresses per interface, MPTCP."""

    def line(ok: bool, what: str, detail: str) -> None:
        click.echo(f"  [{'ok' if ok else '--'}] {what:14} {detail}")

    click.echo(f"sctpbond doctor on {socket.gethostname()} (kernel {os.uname().release})")
    ok, why = sctp_support()
    line(ok, "kernel SCTP", "available" if ok else why)
    if ok:
        buffers_ok, detail = sctp_buffers()
        line(buffers_ok, "SCTP buffers", detail)
    line(True, "--transport", f"auto picks {'sctp' if ok else 'tcp'}")
    mptcp_ok, mptcp_why = mptcp_support()
    line(mptcp_ok, "MPTCP", "enabled" if mptcp_ok else mptcp_why)
    vm = _vm_kernel()
    line(bool(vm) or ok, "SCTP test VM", f"kernel {vm} (tests/vm/run.sh)" if vm else
         ("not needed" if ok else "none: bash scripts/setup.sh installs one"))
    click.echo("  interfaces:")
    try:
        for name, state, addrs in _interfaces():
            click.echo(f"    {name:12} {str(state).lower():8} {', '.join(addrs) or '-'}")
    except Exception as exc:  # doctor reports, it does not fail
        click.echo(f"    cannot list interfaces: {exc}")
