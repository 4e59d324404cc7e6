"""SctpChannel against the real kernel, over loopback: association status read without pysctp (a GIL-free
getsockopt), and frames received whole into buffers of their own size, with bad messages refused. Runs where
the kernel has SCTP (inside the VM on hosts without it)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from sctpbond.errors import ConnectError, RemoteProtocolError, TransportError, UsageError
from sctpbond.proto.frames import HEADER, Data, FrameType, Ping, data_prefix, decode, encode
from sctpbond.transport import sctp_support

pytestmark = pytest.mark.sctp
if not sctp_support()[0]:
    pytestmark = [pytest.mark.sctp, pytest.mark.skip(reason="kernel without SCTP: run via tests/vm/run.sh")]
else:
    from sctpbond.transport import sctp, sctp_api


@pytest.fixture
def pair():
    """(client channel, server channel) of one loopback association."""
    listener = sctp.SctpListener(["127.0.0.1"], 0)
    port = listener.addresses()[0][1]
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(listener.accept(10)))
    t.start()
    client = sctp.connect(("127.0.0.1", port), timeout=10)
    t.join(15)
    server = accepted[0]
    assert server is not None
    server.set_timeout(10)
    yield client, server
    client.close()
    server.close()
    listener.close()


def test_status_matches_pysctp(pair):
    """Our struct layouts (sctp_api.py) against pysctp's C extension, an independent reading of the same API."""
    import sctp as pysctp  # pysctp: a test dependency only

    client, server = pair
    client.send((encode(Ping(1)),))  # some traffic, so srtt and cwnd are set
    server.recv()
    ours = sctp_api.assoc_status(client.sock.fileno())
    sk = pysctp.sctpsocket_tcp(socket.AF_INET, client.sock)
    theirs = sk.get_status()
    assert (ours.state, ours.in_streams, ours.out_streams) == (theirs.state, theirs.instrms, theirs.outstrms)
    assert ours.out_streams == sctp.DEFAULT_STREAMS
    assert ours.primary == tuple(theirs.primary.sockaddr[:2])
    assert (ours.primary_state, ours.mtu, ours.rto_ms) == (theirs.primary.state, theirs.primary.mtu,
                                                          theirs.primary.rto)
    assert ours.cwnd > 0 and ours.rwnd > 0
    assert sctp_api.peer_addresses(client.sock.fileno()) == [tuple(a[:2]) for a in sk.getpaddrs()]
    assert client.rtt() is None or 0 < client.rtt() < 1
    info = client.info()
    assert info["primary"] == "127.0.0.1" and info["peer_addresses"] == ["127.0.0.1"]


def test_status_of_a_closed_channel_is_an_oserror_not_a_crash(pair):
    client, _server = pair
    client.close()
    with pytest.raises(OSError):
        sctp_api.assoc_status(client.sock.fileno())
    assert client.rtt() is None
    assert client.info()["out_streams"] == sctp.DEFAULT_STREAMS  # last known state


@pytest.mark.parametrize("size", [1, 64 * 1024, 1 << 20])
def test_a_data_frame_arrives_whole_in_a_buffer_of_its_own_size(pair, size):
    client, server = pair
    payload = os.urandom(size)
    client.send((data_prefix(12345, size), payload), data=True)
    view = server.recv()
    assert isinstance(view.obj, bytes) and len(view.obj) == len(view) == 16 + size  # no oversized buffer kept
    frame = decode(view)
    assert frame == Data(12345, payload)
    assert sum(server.streams_seen.values()) == 1 and 0 not in server.streams_seen  # a DATA stream, not 0


def test_garbage_header_is_refused_before_the_message_is_read(pair):
    client, server = pair
    client.sock.sendmsg([b"\xff" * 64])
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        server.recv()


def test_message_longer_than_its_header_is_refused(pair):
    client, server = pair
    client.sock.sendmsg([HEADER.pack(FrameType.PING, 0, 0, 8) + bytes(8) + b"trailing junk"])
    with pytest.raises(RemoteProtocolError, match="longer than"):
        server.recv()


def test_message_shorter_than_a_header_reaches_the_decoder_which_refuses_it(pair):
    client, server = pair
    client.sock.sendmsg([b"\x01\x00"])
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode(server.recv())


def test_peer_close_ends_the_stream(pair):
    client, server = pair
    client.send((encode(Ping(7)),))
    client.sock.shutdown(socket.SHUT_WR)
    assert decode(server.recv()) == Ping(7)
    assert server.recv() is None


def test_data_follows_ready_in_order_until_the_peer_is_heard(pair):
    """After READY (stream 0, ordered) the listener's DATA must not overtake it on an unordered stream: it goes on
    stream 0 until the dialler's first frame arrives, then spreads over the data streams again."""
    client, server = pair
    server.order_until_heard()
    server.send((encode(Ping(1)),))  # stands for READY
    payload = os.urandom(1000)
    for _ in range(3):
        server.send((data_prefix(0, len(payload)), payload), data=True)
    for _ in range(4):
        client.recv()
    assert set(client.streams_seen) == {0}, client.streams_seen
    client.send((encode(Ping(2)),))  # the dialler, READY in hand, is heard
    assert decode(server.recv()) == Ping(2)
    server.send((data_prefix(0, len(payload)), payload), data=True)
    client.recv()
    assert set(client.streams_seen) - {0}, client.streams_seen


def test_buffers_are_read_back_and_frames_fit_several_times(pair):
    client, server = pair
    for ch in (client, server):
        assert ch.sndbuf == ch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 0
        assert ch.max_frame == ch.sndbuf // sctp.FRAME_SHARE
        info = ch.info()
        assert info["sndbuf"] == ch.sndbuf and info["rtx_chunks"] == 0


def test_timers_and_sack_delay_are_set_on_the_association(pair):
    client, _server = pair
    fd = client.sock.fileno()
    _aid, initial, most, least = sctp_api.RTOINFO.unpack(sctp_api.getsockopt(fd, sctp_api.SCTP_RTOINFO, 16))
    assert (initial, most, least) == (sctp.RTO_INITIAL_MS, sctp.RTO_MAX_MS, sctp.RTO_MIN_MS)
    raw = sctp_api.getsockopt(fd, sctp_api.SCTP_PEER_ADDR_THLDS, sctp_api.PADDRTHLDS.size)
    assert sctp_api.PADDRTHLDS.unpack(raw)[2:] == (sctp.PATH_MAX_RXT, sctp.PF_THRESHOLD)
    _aid, delay, freq = sctp_api.SACKINFO.unpack(sctp_api.getsockopt(fd, sctp_api.SCTP_DELAYED_SACK, 12))
    assert sctp.SACK_DELAY_MS <= delay < 50 and freq == sctp.SACK_FREQ  # jiffies: 10 ms reads back as 12


def test_abort_releases_a_blocked_sender_and_the_peer_sees_an_abort(pair):
    """The peer stops reading; our sender blocks for room in the send buffer. abort() must release it at once (a
    graceful shutdown does not: measured 8.5 s, until the peer read again) and close() then ABORTs the
    association: the peer reads what had arrived, then a reset, not an orderly end."""
    client, server = pair
    client.set_timeout(None)
    client.set_send_stall(60)
    payload = bytes(60 * 1024)
    sent, result = [], []

    def sender():
        try:
            while True:
                client.send((data_prefix(0, len(payload)), payload), data=True)
                sent.append(time.monotonic())
        except TransportError as exc:
            result.append((time.monotonic(), str(exc)))

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (sent and time.monotonic() - sent[-1] > 1.0):
        time.sleep(0.1)
    assert t.is_alive() and sent, "the sender never blocked"
    t0 = time.monotonic()
    client.abort()
    t.join(2)
    assert not t.is_alive() and result, "abort() left the sender blocked"
    assert result[0][0] - t0 < 0.5 and "aborted" in result[0][1], (result, t0)
    client.close()
    got = 0
    with pytest.raises(TransportError, match="aborted by the peer"):
        while server.recv() is not None:
            got += 1
    assert 0 < got <= len(sent)


@pytest.mark.parametrize(("bind", "remote"), [("::1", "::1"), ("::", "127.0.0.1"), ("::", "::1"),
                                              ("localhost", "127.0.0.1")])
def test_ipv6_dual_stack_and_named_listeners(bind, remote):
    listener = sctp.SctpListener([bind], 0)
    try:
        port = listener.addresses()[0][1]
        accepted = []
        t = threading.Thread(target=lambda: accepted.append(listener.accept(10)))
        t.start()
        client = sctp.connect((remote, port), timeout=10)
        t.join(15)
        server = accepted[0]
        assert server is not None
        assert server.remote[0] == remote and client.remote == (remote, port)  # mapped v4 shown as plain v4
        client.send((encode(Ping(5)),))
        assert decode(server.recv()) == Ping(5)
        client.close()
        server.close()
    finally:
        listener.close()


def test_a_pinned_connect_binds_only_its_address(pair):
    listener = sctp.SctpListener(["127.0.0.1"], 0)
    try:
        port = listener.addresses()[0][1]
        accepted = []
        t = threading.Thread(target=lambda: accepted.append(listener.accept(10)))
        t.start()
        client = sctp.connect(("127.0.0.1", port), "127.0.0.1", timeout=10, pinned=True)
        t.join(15)
        assert sctp_api.local_bound(client.sock.fileno()) == [("127.0.0.1", client.local[1])]
        client.close()
        accepted[0].close()
    finally:
        listener.close()


def test_unknown_names_are_one_line_errors():
    with pytest.raises(UsageError, match="cannot listen on no-such-host.invalid"):
        sctp.SctpListener(["no-such-host.invalid"], 0)
    with pytest.raises(ConnectError, match="cannot resolve no-such-host.invalid"):
        sctp.connect(("no-such-host.invalid", 9), timeout=2)
