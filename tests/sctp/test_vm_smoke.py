"""Smoke test: kernel SCTP works and stream ids survive the trip (RFC 6458 SS5.3.4-5.3.5).

Runs inside the VM (``tests/vm/run.sh -- pytest tests/sctp``); on a kernel without
SCTP it skips with the reason. Stdlib only: socket + struct.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest

pytestmark = pytest.mark.sctp

IPPROTO_SCTP = 132  # also the SOL_SCTP level
SCTP_RECVRCVINFO = 32  # sockopt: attach an SCTP_RCVINFO cmsg to each received message
SCTP_SNDINFO = 2  # cmsg type: struct sctp_sndinfo
SCTP_RCVINFO = 3  # cmsg type: struct sctp_rcvinfo
SNDINFO = struct.Struct("=HHIIi")  # snd_sid, snd_flags, snd_ppid, snd_context, snd_assoc_id
RCVINFO = struct.Struct("=HHHxxIIIIi")  # rcv_sid, rcv_ssn, rcv_flags, ppid, tsn, cumtsn, context, assoc_id


def _sctp_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP)
    except OSError as e:
        if e.errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT):
            pytest.skip(
                f"kernel has no SCTP ({errno.errorcode.get(e.errno, e.errno)}); "
                "run inside the VM: tests/vm/run.sh -- pytest tests/sctp"
            )
        raise


def test_sctp_socket_can_be_created() -> None:
    with _sctp_socket() as s:
        assert s.proto == IPPROTO_SCTP
        assert s.type == socket.SOCK_STREAM


def test_message_on_stream_3_arrives_on_stream_3() -> None:
    with _sctp_socket() as srv, _sctp_socket() as cli:
        srv.settimeout(10)
        cli.settimeout(10)
        # Without SCTP_RECVRCVINFO the kernel attaches no cmsg and every
        # message looks as if it came on stream 0. Set on the listener, the
        # option is inherited by the accepted socket.
        srv.setsockopt(IPPROTO_SCTP, SCTP_RECVRCVINFO, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        cli.connect(srv.getsockname())
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            payload = b"hello on stream 3"
            sent = cli.sendmsg([payload], [(IPPROTO_SCTP, SCTP_SNDINFO, SNDINFO.pack(3, 0, 0, 0, 0))])
            assert sent == len(payload)

            buf = bytearray(1024)
            n, ancdata, flags, _ = conn.recvmsg_into([buf], socket.CMSG_SPACE(RCVINFO.size))
            assert bytes(buf[:n]) == payload
            assert flags & socket.MSG_EOR, "whole message in one read"
            infos = [d for level, kind, d in ancdata if level == IPPROTO_SCTP and kind == SCTP_RCVINFO]
            assert len(infos) == 1, f"expected one SCTP_RCVINFO cmsg, got {ancdata!r}"
            sid = RCVINFO.unpack_from(infos[0])[0]
            assert sid == 3
