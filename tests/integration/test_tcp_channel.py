"""The TCP channel on loopback: header-first reads against the phase's expected frames, and the send stall bound
(a peer that accepts no bytes for the stall time fails the send; one that reads slowly never does)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from sctpbond.errors import IntegrityError, RemoteProtocolError, TransportError
from sctpbond.proto.crypto import Sealer
from sctpbond.proto.frames import HEADER, LISTENER_HELLO, FrameType, Ping, data_prefix, decode, encode
from sctpbond.transport.sealed import SealedChannel
from sctpbond.transport.tcp import TcpChannel, TcpListener


@pytest.fixture
def pair() -> Iterator[tuple[TcpChannel, socket.socket]]:
    """Our channel, and the raw socket of its peer."""
    listener = TcpListener(["127.0.0.1"], 0)
    port = listener.addresses()[0][1]
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small advertised window
    peer.connect(("127.0.0.1", port))
    ours = None
    for _ in range(50):
        ours = listener.accept(0.1)
        if ours is not None:
            break
    assert ours is not None
    ours.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    yield ours, peer
    ours.close()
    peer.close()
    listener.close()


def test_a_frame_of_another_phase_is_refused_from_its_header(pair):
    ours, peer = pair
    peer.sendall(HEADER.pack(FrameType.SEALED, 0, 0, 1 << 20))  # a 1 MiB claim: never allocated
    with pytest.raises(RemoteProtocolError, match="SEALED frame where HELLO was expected"):
        ours.recv(LISTENER_HELLO)


def test_an_end_inside_a_frame_is_transport_trouble(pair):
    ours, peer = pair
    peer.sendall(encode(Ping(1))[:12])
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(TransportError, match="middle of a frame"):
        ours.recv()


def test_a_peer_that_reads_nothing_fails_the_send_after_the_stall_time(pair):
    ours, _peer = pair
    ours.set_send_stall(0.5)
    payload = bytes(1 << 20)
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="accepted no data for 0.5 s"):
        for _ in range(64):
            ours.send((data_prefix(0, len(payload)), payload), data=True)
    assert time.monotonic() - t0 < 5


def test_a_slow_reader_is_not_cut_and_every_byte_arrives(pair):
    """The stall bounds a wait without progress, not a send: a 1 MiB frame to a peer that pauses 0.3 s after each
    128 KiB takes about 2.4 s, five times the stall time, and goes through byte-exact."""
    ours, peer = pair
    ours.set_send_stall(0.5)
    payload = bytes(range(256)) * 4096
    got = bytearray()

    def slow_reader() -> None:
        mark = 0
        while len(got) < 16 + len(payload):
            if len(got) - mark >= 128 * 1024:
                time.sleep(0.3)
                mark = len(got)
            chunk = peer.recv(65536)
            if not chunk:
                return
            got.extend(chunk)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    ours.send((data_prefix(7, len(payload)), payload), data=True)
    t0 = time.monotonic()
    reader.join(30)
    assert decode(bytes(got)).payload == payload
    assert time.monotonic() - t0 < 10


KEYS = (bytes(range(32)), bytes(range(32, 64)))


def _sealed_pair(pair) -> tuple[socket.socket, SealedChannel]:
    """Our channel sealed, and a raw peer socket that sends what we make it (an on-path attacker's stream)."""
    ours, peer = pair
    return peer, SealedChannel(ours, KEYS[1], KEYS[0])  # we receive under KEYS[0]


def test_a_bit_flipped_in_a_sealed_frames_header_fails_the_path_not_the_session(pair):
    """The outer header is refused by the transport before the opener sees it; that still means 'not protected
    as agreed' (IntegrityError: the path fails and is re-dialled), not a protocol violation of the peer's."""
    peer, ours = _sealed_pair(pair)
    head, body = Sealer(KEYS[0]).seal((encode(Ping(1)),))
    wire = bytearray(head + body)
    wire[1] ^= 0x01  # the flags byte
    peer.sendall(wire)
    with pytest.raises(IntegrityError):
        ours.recv()


def test_a_dropped_sealed_frame_on_tcp_fails_the_path(pair):
    """TCP delivers in order: a sequence number that skips one means a frame was removed on the way."""
    peer, ours = _sealed_pair(pair)
    sealer = Sealer(KEYS[0])
    first, _dropped, third = (b"".join(sealer.seal((encode(Ping(i)),))) for i in range(3))
    peer.sendall(first + third)
    assert decode(ours.recv()) == Ping(0)
    with pytest.raises(IntegrityError, match="was due"):
        ours.recv()
