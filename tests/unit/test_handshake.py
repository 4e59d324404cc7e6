"""Per-connection handshake HELLO -> WELCOME -> AUTH -> READY, with and without a pre-shared key.

Every frame crosses an encode/decode round trip, as it would on a real connection.
"""

from __future__ import annotations

import itertools

import pytest

from sctpbond.errors import AuthError, RemoteProtocolError, SessionAborted
from sctpbond.proto.frames import (
    MAC_SIZE,
    Abort,
    AbortCode,
    Auth,
    HelloKind,
    Ping,
    Ready,
    Welcome,
    decode,
    encode,
)
from sctpbond.proto.handshake import ClientHandshake, Negotiated, ServerHandshake, proof

KEY = b"correct horse battery staple"
TOKEN_A = bytes.fromhex("00112233445566778899aabbccddeeff")
_nonces = (bytes([i]) * 16 for i in itertools.count(1))


def wire(frame):
    return decode(encode(frame))


class Registry:
    """The listener's table of live sessions."""

    def __init__(self, tokens=()) -> None:
        self.tokens = set(tokens)
        self.issued = []

    def new_token(self) -> bytes:
        token = bytes([0xA0 + len(self.issued)]) * 16
        self.issued.append(token)
        self.tokens.add(token)
        return token

    def knows(self, token: bytes) -> bool:
        return token in self.tokens


def make_client(key=None, kind=HelloKind.NEW, token=bytes(16), path_id=0, nonce=None):
    return ClientHandshake(key=key, kind=kind, token=token, path_id=path_id, nonce=nonce or next(_nonces),
                           window=1 << 20, max_chunk=65536)


def make_server(key=None, registry=None, nonce=None, addresses=()):
    registry = registry or Registry()
    return ServerHandshake(key=key, nonce=nonce or next(_nonces), window=2 << 20, max_chunk=32768,
                           new_token=registry.new_token, knows=registry.knows, addresses=addresses)


def run(client: ClientHandshake, server: ServerHandshake) -> tuple[Negotiated, Negotiated]:
    welcome = server.receive(wire(client.start()))
    assert isinstance(welcome, Welcome)
    auth = client.receive(wire(welcome))
    assert isinstance(auth, Auth)
    ready = server.receive(wire(auth))
    assert isinstance(ready, Ready)
    assert client.receive(wire(ready)) is None
    assert client.result is not None and server.result is not None
    return client.result, server.result


@pytest.mark.parametrize("key", [None, KEY], ids=["no-key", "same-key"])
def test_new_session(key) -> None:
    reg = Registry()
    client = make_client(key)
    server = make_server(key, reg, addresses=("10.0.0.1", "fd00::1"))
    cres, sres = run(client, server)
    assert reg.issued == [cres.token]
    assert cres.token == sres.token == server.token
    assert cres.path_id == sres.path_id == 0
    assert cres.kind == sres.kind == HelloKind.NEW
    # each side learns the other's limits
    assert (cres.peer_window, cres.peer_max_chunk) == (2 << 20, 32768)
    assert (sres.peer_window, sres.peer_max_chunk) == (1 << 20, 65536)
    assert cres.peer_addresses == ("10.0.0.1", "fd00::1")


@pytest.mark.parametrize("key", [None, KEY], ids=["no-key", "same-key"])
def test_join_session(key) -> None:
    reg = Registry([TOKEN_A])
    cres, sres = run(make_client(key, HelloKind.JOIN, TOKEN_A, path_id=5), make_server(key, reg))
    assert cres.token == sres.token == TOKEN_A
    assert cres.path_id == sres.path_id == 5
    assert cres.kind == sres.kind == HelloKind.JOIN
    assert reg.issued == []


def test_keyed_macs_are_not_zero_and_differ_by_role() -> None:
    client, server = make_client(KEY), make_server(KEY)
    welcome = server.receive(wire(client.start()))
    auth = client.receive(wire(welcome))
    assert welcome.mac != bytes(MAC_SIZE) and auth.mac != bytes(MAC_SIZE)
    assert welcome.mac != auth.mac


def test_unkeyed_macs_are_zero() -> None:
    client, server = make_client(), make_server()
    welcome = server.receive(wire(client.start()))
    assert welcome.mac == bytes(MAC_SIZE)
    assert client.receive(wire(welcome)) == Auth(bytes(MAC_SIZE))


def test_wrong_key_client_refuses_welcome() -> None:
    client = make_client(KEY)
    server = make_server(b"another key")
    welcome = server.receive(wire(client.start()))
    with pytest.raises(AuthError, match="same key"):
        client.receive(wire(welcome))
    assert client.result is None


def test_wrong_key_server_refuses_auth() -> None:
    """A client that forges its AUTH (does not know the key) is refused by the server with ABORT(AUTH)."""
    client = make_client(KEY)
    server = make_server(KEY)
    server.receive(wire(client.start()))
    with pytest.raises(AuthError):
        server.receive(wire(Auth(b"\x42" * MAC_SIZE)))
    assert isinstance(server.reply, Abort) and server.reply.code == AbortCode.AUTH
    assert server.result is None


@pytest.mark.parametrize(("client_key", "server_key"), [(KEY, None), (None, KEY)],
                         ids=["keyed-client-unkeyed-server", "unkeyed-client-keyed-server"])
def test_key_presence_mismatch(client_key, server_key) -> None:
    client = make_client(client_key)
    server = make_server(server_key)
    with pytest.raises(AuthError):
        server.receive(wire(client.start()))
    assert isinstance(server.reply, Abort)
    assert server.reply.code == AbortCode.AUTH
    assert server.reply.reason  # tells the user what to fix
    assert server.result is None
    # the client learns why from the ABORT
    with pytest.raises(AuthError):
        client.receive(wire(server.reply))


def test_join_with_unknown_token() -> None:
    reg = Registry([TOKEN_A])
    server = make_server(None, reg)
    client = make_client(None, HelloKind.JOIN, b"\x99" * 16, path_id=1)
    with pytest.raises(AuthError, match="unknown session"):
        server.receive(wire(client.start()))
    assert isinstance(server.reply, Abort) and server.reply.code == AbortCode.UNKNOWN_SESSION
    with pytest.raises(SessionAborted):
        client.receive(wire(server.reply))


def test_replayed_auth_fails_against_a_new_server_nonce() -> None:
    """An eavesdropper who captured a whole keyed JOIN handshake replays HELLO and AUTH to the listener."""
    reg = Registry([TOKEN_A])
    client = make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=2)
    hello_bytes = encode(client.start())
    first = make_server(KEY, reg)
    welcome = first.receive(decode(hello_bytes))
    auth_bytes = encode(client.receive(wire(welcome)))
    assert isinstance(first.receive(decode(auth_bytes)), Ready)  # the genuine handshake succeeds

    replay = make_server(KEY, reg)  # fresh nonce
    assert replay.nonce != first.nonce
    replay.receive(decode(hello_bytes))
    with pytest.raises(AuthError):
        replay.receive(decode(auth_bytes))
    assert isinstance(replay.reply, Abort) and replay.reply.code == AbortCode.AUTH
    assert replay.result is None


def test_replay_with_the_same_server_nonce_would_pass() -> None:
    """Shows that the server nonce is what defeats the replay above (so the nonce must be fresh per connection)."""
    reg = Registry([TOKEN_A])
    client = make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=2)
    snonce = b"\x77" * 16
    hello_bytes = encode(client.start())
    welcome = make_server(KEY, reg, nonce=snonce).receive(decode(hello_bytes))
    auth_bytes = encode(client.receive(wire(welcome)))
    again = make_server(KEY, reg, nonce=snonce)
    again.receive(decode(hello_bytes))
    assert isinstance(again.receive(decode(auth_bytes)), Ready)


def test_mac_binds_path_id_and_kind() -> None:
    args = (KEY, b"client", b"\x01" * 16, b"\x02" * 16, TOKEN_A)
    base = proof(*args, 1, HelloKind.JOIN)
    assert proof(*args, 2, HelloKind.JOIN) != base
    assert proof(*args, 1, HelloKind.NEW) != base
    assert proof(KEY, b"server", *args[2:], 1, HelloKind.JOIN) != base
    assert len(base) == MAC_SIZE


def test_auth_for_another_path_id_is_refused() -> None:
    """An AUTH computed for path 1 cannot complete a handshake announced as path 3."""
    reg = Registry([TOKEN_A])
    c1 = make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=1, nonce=b"\x05" * 16)
    server = make_server(KEY, reg, nonce=b"\x06" * 16)
    c3 = make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=3, nonce=b"\x05" * 16)
    welcome = server.receive(wire(c3.start()))
    # the attacker's AUTH was computed by the key holder for path 1 with the same nonces
    forged = Auth(proof(KEY, b"client", c1.nonce, server.nonce, TOKEN_A, 1, HelloKind.JOIN))
    assert welcome.token == TOKEN_A
    with pytest.raises(AuthError):
        server.receive(wire(forged))


def test_client_join_answered_with_another_token() -> None:
    client = make_client(None, HelloKind.JOIN, TOKEN_A, path_id=1)
    client.start()
    bogus = Welcome(b"\x55" * 16, b"\x01" * 16, 1 << 20, 1024)
    with pytest.raises(RemoteProtocolError):
        client.receive(wire(bogus))


def test_out_of_order_frames() -> None:
    client = make_client()
    client.start()
    with pytest.raises(RemoteProtocolError):
        client.receive(wire(Ready()))  # READY before WELCOME
    server = make_server()
    with pytest.raises(RemoteProtocolError):
        server.receive(wire(Auth(bytes(MAC_SIZE))))  # AUTH before HELLO
    assert isinstance(server.reply, Abort) and server.reply.code == AbortCode.PROTOCOL
    server = make_server()
    server.receive(wire(make_client().start()))
    with pytest.raises(RemoteProtocolError):
        server.receive(wire(Ping(1)))
    assert isinstance(server.reply, Abort) and server.reply.code == AbortCode.PROTOCOL


def test_client_sees_abort() -> None:
    client = make_client()
    client.start()
    with pytest.raises(SessionAborted, match="busy"):
        client.receive(wire(Abort(AbortCode.BUSY, "busy")))
    with pytest.raises(AuthError):
        client.receive(wire(Abort(AbortCode.AUTH, "no")))


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        ClientHandshake(key=None, kind=HelloKind.NEW, token=bytes(16), path_id=0, nonce=b"short", window=1,
                        max_chunk=1)
    with pytest.raises(ValueError):
        ClientHandshake(key=None, kind=HelloKind.NEW, token=b"short", path_id=0, nonce=bytes(16), window=1,
                        max_chunk=1)
