"""Per-connection handshake HELLO -> WELCOME -> AUTH -> READY (wire version 2), with and without a pre-shared key.

Both sides are fed the frames as bytes, exactly as they crossed the wire, because the MACs cover the transcript
as sent: HELLO || WELCOME for mac_c (in AUTH), HELLO || WELCOME || AUTH for mac_s (in READY). The tests rewrite
single bytes in flight, replay recorded frames, and check that every refusal says what to tell the peer
(`abort_code`, `peer_reason`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from dataclasses import dataclass, replace

import pytest

from sctpbond.errors import AuthError, LocalProtocolError, ProtocolError, RemoteProtocolError, SessionAborted
from sctpbond.proto.frames import (
    DIALLER_READY,
    DIALLER_WELCOME,
    HEADER_SIZE,
    LISTENER_AUTH,
    LISTENER_HELLO,
    MAC_SIZE,
    Abort,
    AbortCode,
    Auth,
    Hello,
    HelloKind,
    Ping,
    Ready,
    Welcome,
    decode,
    encode,
)
from sctpbond.proto.handshake import ClientHandshake, Negotiated, ServerHandshake, mac

KEY = b"correct horse battery staple"  # keys are at least 16 bytes (the runtime refuses shorter ones)
KEY2 = b"another key, also long enough"
TOKEN_A = bytes.fromhex("00112233445566778899aabbccddeeff")
CLIENT_WINDOW, CLIENT_CHUNK = 1 << 20, 65536
SERVER_WINDOW, SERVER_CHUNK = 4 << 20, 131072
ADDRESSES = ("10.0.0.1", "fd00::1")
CLIENT_ROLE, SERVER_ROLE = b"sctpbond v2 client", b"sctpbond v2 server"
_nonces = (bytes([i % 256]) * 16 for i in itertools.count(1))


class Registry:
    """The listener's table of live sessions."""

    def __init__(self, tokens=()) -> None:
        self.tokens = set(tokens)
        self.issued: list[bytes] = []

    def new_token(self) -> bytes:
        token = bytes([0xA0 + len(self.issued)]) * 16
        self.issued.append(token)
        self.tokens.add(token)
        return token

    def knows(self, token: bytes) -> bool:
        return token in self.tokens


def make_client(key=None, kind=HelloKind.NEW, token=bytes(16), path_id=0, nonce=None, window=CLIENT_WINDOW,
                max_chunk=CLIENT_CHUNK, encrypt=True) -> ClientHandshake:
    return ClientHandshake(key=key, kind=kind, token=token, path_id=path_id, nonce=nonce or next(_nonces),
                           window=window, max_chunk=max_chunk, encrypt=encrypt)


def make_server(key=None, registry=None, nonce=None, addresses=(), window=SERVER_WINDOW, max_chunk=SERVER_CHUNK,
                require_encrypt=True, max_paths=64) -> ServerHandshake:
    registry = registry or Registry()
    return ServerHandshake(key=key, nonce=nonce or next(_nonces), window=window, max_chunk=max_chunk,
                           new_token=registry.new_token, knows=registry.knows, addresses=addresses,
                           require_encrypt=require_encrypt, max_paths=max_paths)


@dataclass
class Wire:
    """The four frames of one handshake, as they went over the wire."""

    hello: bytes = b""
    welcome: bytes = b""
    auth: bytes = b""
    ready: bytes = b""


def run(client: ClientHandshake, server: ServerHandshake, wire: Wire | None = None) -> tuple[Negotiated, Negotiated]:
    """A whole handshake; each side reads only what its `expect` allows, as the transports do."""
    w = wire if wire is not None else Wire()
    assert client.expect == DIALLER_WELCOME and server.expect == LISTENER_HELLO
    w.hello = client.hello()
    hello = server.receive_hello(w.hello)
    assert isinstance(hello, Hello) and server.expect == LISTENER_AUTH
    w.welcome = server.welcome()
    assert decode(w.welcome, client.expect)
    w.auth = client.receive_welcome(w.welcome)
    assert client.expect == DIALLER_READY and client.result is None
    assert decode(w.auth, server.expect)
    sres = server.receive_auth(w.auth)
    w.ready = server.ready()
    assert decode(w.ready, client.expect)
    cres = client.receive_ready(w.ready)
    assert client.result is cres and server.result is sres
    return cres, sres


def flip(frame: bytes, pos: int, bits: int) -> bytes:
    out = bytearray(frame)
    out[pos] ^= bits
    return bytes(out)


def refused(exc: BaseException, *codes: AbortCode) -> None:
    """A refusal is a ProtocolError that says what ABORT to send: a known code and a printable reason."""
    assert isinstance(exc, ProtocolError), repr(exc)
    assert AbortCode(exc.abort_code) in codes, (exc, exc.abort_code)
    assert exc.peer_reason and exc.peer_reason.isprintable()
    assert not exc.from_peer
    encode(Abort(AbortCode(exc.abort_code), exc.peer_reason))  # and it fits in one


# -- successful handshakes -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "encrypt"), [(None, True), (KEY, True), (KEY, False)],
                         ids=["no-key", "same-key", "same-key-no-encrypt"])
def test_new_session(key, encrypt) -> None:
    reg = Registry()
    client = make_client(key, encrypt=encrypt)
    server = make_server(key, reg, addresses=ADDRESSES, require_encrypt=encrypt)
    cres, sres = run(client, server)
    assert reg.issued == [cres.token]
    assert cres.token == sres.token == server.token
    assert cres.path_id == sres.path_id == 0
    assert cres.kind == sres.kind == HelloKind.NEW
    # each side learns the other's limits
    assert (cres.peer_window, cres.peer_max_chunk) == (SERVER_WINDOW, SERVER_CHUNK)
    assert (sres.peer_window, sres.peer_max_chunk) == (CLIENT_WINDOW, CLIENT_CHUNK)
    assert cres.peer_addresses == ADDRESSES and sres.peer_addresses == ()
    # keys whenever there is a key (AUTHED frames need them as much as SEALED ones), crossed, per direction
    assert (cres.keys is None) == (sres.keys is None) == (key is None)
    if key is not None:
        assert cres.keys == (sres.keys[1], sres.keys[0]) and cres.keys[0] != cres.keys[1]
    assert cres.encrypt == sres.encrypt == (key is not None and encrypt)


@pytest.mark.parametrize("key", [None, KEY], ids=["no-key", "same-key"])
def test_join_session(key) -> None:
    reg = Registry([TOKEN_A])
    cres, sres = run(make_client(key, HelloKind.JOIN, TOKEN_A, path_id=5), make_server(key, reg))
    assert cres.token == sres.token == TOKEN_A
    assert cres.path_id == sres.path_id == 5
    assert cres.kind == sres.kind == HelloKind.JOIN
    assert reg.issued == []


def test_frame_sizes_on_the_wire() -> None:
    w = Wire()
    run(make_client(KEY), make_server(KEY, addresses=ADDRESSES), w)
    assert len(w.hello) == HEADER_SIZE + 56
    assert len(w.welcome) == HEADER_SIZE + 45 + 17 * len(ADDRESSES)
    assert len(w.auth) == len(w.ready) == HEADER_SIZE + MAC_SIZE


def test_macs_are_hmac_sha256_over_the_transcript() -> None:
    """mac_c = HMAC(K, "sctpbond v2 client" || HELLO || WELCOME); mac_s adds the AUTH frame (wire-format.md)."""
    w = Wire()
    run(make_client(KEY), make_server(KEY, addresses=ADDRESSES), w)
    mac_c = hmac.new(KEY, CLIENT_ROLE + w.hello + w.welcome, hashlib.sha256).digest()
    mac_s = hmac.new(KEY, SERVER_ROLE + w.hello + w.welcome + w.auth, hashlib.sha256).digest()
    assert decode(w.auth) == Auth(mac_c) and decode(w.ready) == Ready(mac_s)
    assert mac(KEY, CLIENT_ROLE, w.hello + w.welcome) == mac_c
    assert mac_c != mac_s and bytes(MAC_SIZE) not in (mac_c, mac_s)


def test_unkeyed_macs_are_zero() -> None:
    w = Wire()
    run(make_client(), make_server(), w)
    assert decode(w.auth) == Auth(bytes(MAC_SIZE)) and decode(w.ready) == Ready(bytes(MAC_SIZE))


def test_listener_sends_nothing_derived_from_the_key_before_auth() -> None:
    """WELCOME carries no MAC: it is the same byte for byte whatever the listener's key, so a stranger who dials
    learns nothing to test guessed keys against; READY (mac_s) comes only after a verified AUTH."""
    snonce = b"\x5c" * 16
    welcomes = []
    for key in (None, KEY, KEY2):
        client = make_client(key, nonce=b"\x11" * 16)
        server = make_server(key, Registry(), nonce=snonce, addresses=ADDRESSES)
        server.receive_hello(client.hello())
        welcomes.append(server.welcome())
        with pytest.raises(LocalProtocolError):  # not even by mistake: READY before AUTH is refused
            server.ready()
    assert welcomes[0] == welcomes[1] == welcomes[2]
    # a stranger's AUTH is refused and the listener still has nothing to send but the ABORT
    server = make_server(KEY)
    server.receive_hello(make_client(KEY).hello())
    server.welcome()
    with pytest.raises(AuthError) as info:
        server.receive_auth(encode(Auth(b"\x42" * MAC_SIZE)))
    refused(info.value, AbortCode.AUTH)
    assert info.value.peer_reason == "wrong key"
    with pytest.raises(LocalProtocolError):
        server.ready()
    assert server.result is None


def test_expect_follows_the_phase() -> None:
    client, server = make_client(), make_server()
    assert client.expect == DIALLER_WELCOME and server.expect == LISTENER_HELLO
    server.receive_hello(client.hello())
    assert server.expect == LISTENER_AUTH
    client.receive_welcome(server.welcome())
    assert client.expect == DIALLER_READY


# -- rewriting the handshake in flight ---------------------------------------------------------------------------

BITS = (0x01, 0x02, 0x10, 0x80, 0xFF)
HELLO_LEN = HEADER_SIZE + 56
WELCOME_LEN = HEADER_SIZE + 45 + 17 * len(ADDRESSES)


def _hello_rewritten(pos: int, bits: int) -> str:
    """A keyed handshake whose HELLO has one byte rewritten on the way to the listener. Returns where it failed."""
    client = make_client(KEY, nonce=b"\x01" * 16)
    server = make_server(KEY, Registry([TOKEN_A]), nonce=b"\x02" * 16, addresses=ADDRESSES, require_encrypt=False)
    try:
        server.receive_hello(flip(client.hello(), pos, bits))
    except ProtocolError as exc:
        refused(exc, AbortCode.PROTOCOL, AbortCode.AUTH, AbortCode.UNKNOWN_SESSION, AbortCode.TOO_MANY_PATHS)
        return "hello"
    # WELCOME is not authenticated: the dialler cannot notice yet, and answers with its proof over what it sent
    auth = client.receive_welcome(server.welcome())
    with pytest.raises(AuthError) as info:
        server.receive_auth(auth)
    refused(info.value, AbortCode.AUTH)
    assert info.value.peer_reason == "wrong key" and server.result is None
    return "mac"


@pytest.mark.parametrize("pos", range(HELLO_LEN))
def test_any_rewritten_hello_byte_fails_the_handshake(pos: int) -> None:
    for bits in BITS:
        _hello_rewritten(pos, bits)


def test_rewritten_hello_fields_are_caught_by_the_mac() -> None:
    """The fields a listener accepts either way (path id, token of a NEW, nonce, window, chunk, the encryption
    flag of a listener that does not insist) are exactly what the transcript MAC is for; non-zero reserved bits are
    refused by the decoder before that."""
    body = HEADER_SIZE
    cases = {
        "path id": body + 9, "token of a NEW": body + 20, "nonce": body + 30,
        "window": body + 51, "max chunk": body + 55, "encrypt flag": body + 7,
    }
    for field, pos in cases.items():
        bits = 0x02 if field == "encrypt flag" else 0x01
        assert _hello_rewritten(pos, bits) == "mac", field
    assert _hello_rewritten(body + 11, 0x01) == "hello"  # reserved


def _listener_welcome_for(hello: Hello, server: ServerHandshake) -> bytes:
    """Run the listener on an attacker's HELLO; return its WELCOME."""
    server.receive_hello(encode(hello))
    return server.welcome()


@pytest.mark.parametrize("change", [
    {"window": 64 << 20}, {"max_chunk": 128 << 10}, {"encrypt": False}, {"path_id": 7},
    {"kind": HelloKind.JOIN, "token": TOKEN_A},
], ids=["window", "max-chunk", "strip-encrypt", "path-id", "new-to-join"])
def test_rewritten_hello_fields(change: dict) -> None:
    client = make_client(KEY)
    original = decode(client.hello())
    forged = replace(original, **change)
    server = make_server(KEY, Registry([TOKEN_A]), require_encrypt=False)
    welcome = _listener_welcome_for(forged, server)
    with pytest.raises(AuthError):
        server.receive_auth(client.receive_welcome(welcome))
    assert server.result is None


def _welcome_rewritten(pos: int, bits: int) -> str:
    """A keyed handshake whose WELCOME has one byte rewritten on the way to the dialler."""
    client = make_client(KEY, nonce=b"\x03" * 16)
    server = make_server(KEY, nonce=b"\x04" * 16, addresses=ADDRESSES)
    hello = client.hello()
    server.receive_hello(hello)
    welcome = server.welcome()
    try:
        auth = client.receive_welcome(flip(welcome, pos, bits))
    except ProtocolError as exc:
        refused(exc, AbortCode.PROTOCOL)
        assert client.expect == DIALLER_WELCOME  # no AUTH went out
        return "welcome"
    with pytest.raises(AuthError) as info:  # the listener's transcript has the WELCOME it sent
        server.receive_auth(auth)
    refused(info.value, AbortCode.AUTH)
    # and had it answered anyway, its mac_s (over the WELCOME it sent) would not pass the dialler either
    impostor_ready = encode(Ready(mac(KEY, SERVER_ROLE, hello + welcome + auth)))
    with pytest.raises(AuthError) as info:
        client.receive_ready(impostor_ready)
    refused(info.value, AbortCode.AUTH)
    assert client.result is None
    return "mac"


@pytest.mark.parametrize("pos", range(WELCOME_LEN))
def test_any_rewritten_welcome_byte_fails_the_handshake(pos: int) -> None:
    for bits in BITS:
        _welcome_rewritten(pos, bits)


def test_rewritten_welcome_fields_are_caught_by_the_mac() -> None:
    body = HEADER_SIZE
    cases = {
        "token": body + 3, "nonce": body + 20, "window": body + 39, "max chunk": body + 43,
        "IPv4 address": body + 45 + 4, "IPv4 padding (decodes to the same address)": body + 45 + 10,
        "IPv6 address": body + 45 + 17 + 16,
    }
    for field, pos in cases.items():
        assert _welcome_rewritten(pos, 0x01) == "mac", field


def test_padding_rewrite_is_invisible_to_the_decoder() -> None:
    """Why the MACs cover the bytes as sent rather than the decoded fields: this rewrite decodes to the same
    WELCOME, yet the handshake fails."""
    server = make_server(KEY, addresses=ADDRESSES)
    server.receive_hello(make_client(KEY).hello())
    welcome = server.welcome()
    rewritten = flip(welcome, HEADER_SIZE + 45 + 10, 0x01)
    assert decode(rewritten) == decode(welcome) and rewritten != welcome
    assert _welcome_rewritten(HEADER_SIZE + 45 + 10, 0x01) == "mac"


def test_tampered_advertised_addresses_are_never_accepted() -> None:
    """With a key an on-path attacker cannot steer the dialler's automatic paths to its own addresses."""
    client, server = make_client(KEY), make_server(KEY, addresses=("10.0.0.1", "fd00::0001"))
    hello = client.hello()
    server.receive_hello(hello)
    welcome = server.welcome()
    genuine = decode(welcome)
    assert genuine.addresses == ("10.0.0.1", "fd00::1")  # canonical on the wire
    forged = encode(replace(genuine, addresses=("192.0.2.66",)))
    auth = client.receive_welcome(forged)
    with pytest.raises(AuthError):
        server.receive_auth(auth)
    with pytest.raises(AuthError):  # nor with the READY the listener would have sent for its real WELCOME
        client.receive_ready(encode(Ready(mac(KEY, SERVER_ROLE, hello + welcome + auth))))
    assert client.result is None  # the forged list never reaches the caller


# -- keys ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("client_key", "server_key"), [(KEY, KEY2), (KEY2, KEY)], ids=["c-KEY", "c-KEY2"])
def test_wrong_key(client_key: bytes, server_key: bytes) -> None:
    client, server = make_client(client_key), make_server(server_key)
    server.receive_hello(client.hello())
    auth = client.receive_welcome(server.welcome())
    with pytest.raises(AuthError, match="wrong key") as info:
        server.receive_auth(auth)
    refused(info.value, AbortCode.AUTH)
    assert info.value.peer_reason == "wrong key" and server.result is None
    # the dialler learns it from the listener's ABORT
    abort = encode(Abort(AbortCode(info.value.abort_code), info.value.peer_reason))
    with pytest.raises(AuthError, match="same key") as peer:
        client.receive_ready(abort)
    assert peer.value.from_peer and client.result is None


@pytest.mark.parametrize(("client_key", "server_key"), [(KEY, KEY2), (KEY2, KEY)], ids=["c-KEY", "c-KEY2"])
def test_dialler_refuses_a_listener_with_another_key(client_key: bytes, server_key: bytes) -> None:
    """A listener that skipped its own check cannot pass the dialler's: mac_s under another key is refused."""
    client = make_client(client_key)
    hello = client.hello()
    server = make_server(server_key)
    server.receive_hello(hello)
    welcome = server.welcome()
    auth = client.receive_welcome(welcome)
    with pytest.raises(AuthError, match="same key") as info:
        client.receive_ready(encode(Ready(mac(server_key, SERVER_ROLE, hello + welcome + auth))))
    refused(info.value, AbortCode.AUTH)
    assert info.value.peer_reason == "wrong key" and client.result is None


def test_roles_are_not_interchangeable() -> None:
    """The dialler's own mac_c sent back as READY (a reflection) is refused."""
    w = Wire()
    client = make_client(KEY)
    server = make_server(KEY)
    w.hello = client.hello()
    server.receive_hello(w.hello)
    w.welcome = server.welcome()
    w.auth = client.receive_welcome(w.welcome)
    with pytest.raises(AuthError):
        client.receive_ready(encode(Ready(decode(w.auth).mac)))


@pytest.mark.parametrize(("client_key", "server_key", "says"), [
    (KEY, None, "no key"), (None, KEY, "requires a key"),
], ids=["keyed-client-unkeyed-server", "unkeyed-client-keyed-server"])
def test_key_on_one_side_only(client_key, server_key, says: str) -> None:
    client, server = make_client(client_key), make_server(server_key)
    with pytest.raises(AuthError) as info:
        server.receive_hello(client.hello())
    refused(info.value, AbortCode.AUTH)
    assert says in info.value.peer_reason  # tells the user which side lacks the key
    assert server.hello is None and server.result is None
    # the dialler learns why from the ABORT
    abort = encode(Abort(AbortCode.AUTH, info.value.peer_reason))
    with pytest.raises(AuthError, match=says) as peer:
        client.receive_welcome(abort)
    assert peer.value.from_peer


def test_keyless_sides_refuse_a_mac() -> None:
    """Without a key both MACs must be zeros: a non-zero one means the peers are not configured alike."""
    client, server = make_client(), make_server()
    server.receive_hello(client.hello())
    client.receive_welcome(server.welcome())
    with pytest.raises(AuthError) as info:
        server.receive_auth(encode(Auth(b"\x01" * MAC_SIZE)))
    refused(info.value, AbortCode.AUTH)
    with pytest.raises(AuthError) as info:
        client.receive_ready(encode(Ready(b"\x01" * MAC_SIZE)))
    refused(info.value, AbortCode.AUTH)


def test_encrypting_listener_refuses_a_no_encrypt_dialler() -> None:
    server = make_server(KEY)
    with pytest.raises(AuthError, match="requires encryption") as info:
        server.receive_hello(make_client(KEY, encrypt=False).hello())
    refused(info.value, AbortCode.AUTH)


# -- parameters ----------------------------------------------------------------------------------------------------

BAD_PARAMS = [
    (0, 65536), (1 << 20, 0), (1 << 20, 1), (16 << 20, 2 << 20), (3 * 65536, 65536), (4 * (1 << 20) - 1, 1 << 20),
    ((1 << 32) + 1, 65536),
]
BAD_IDS = ["window-0", "chunk-0", "chunk-1", "chunk-2MiB", "window-3-chunks", "window-just-short", "window-over-4GiB"]


@pytest.mark.parametrize(("window", "chunk"), BAD_PARAMS, ids=BAD_IDS)
def test_listener_refuses_bad_dialler_parameters(window: int, chunk: int) -> None:
    server = make_server()
    with pytest.raises(RemoteProtocolError, match="the dialler") as info:
        server.receive_hello(make_client(window=window, max_chunk=chunk).hello())
    refused(info.value, AbortCode.PROTOCOL)
    assert server.hello is None and server.expect == LISTENER_HELLO


@pytest.mark.parametrize(("window", "chunk"), BAD_PARAMS, ids=BAD_IDS)
def test_dialler_refuses_bad_listener_parameters(window: int, chunk: int) -> None:
    client = make_client(KEY)
    server = make_server(KEY, window=window, max_chunk=chunk)
    server.receive_hello(client.hello())
    with pytest.raises(RemoteProtocolError, match="the listener") as info:
        client.receive_welcome(server.welcome())
    refused(info.value, AbortCode.PROTOCOL)
    assert client.expect == DIALLER_WELCOME  # gave up without sending its mac_c


@pytest.mark.parametrize(("window", "chunk"), [(4 * 65536, 65536), (4 << 20, 1 << 20), (1 << 32, 65536)])
def test_parameters_at_the_limits_are_accepted(window: int, chunk: int) -> None:
    cres, sres = run(make_client(window=window, max_chunk=chunk), make_server(window=window, max_chunk=chunk))
    assert (cres.peer_window, cres.peer_max_chunk) == (sres.peer_window, sres.peer_max_chunk) == (window, chunk)


@pytest.mark.parametrize(("path_id", "max_paths"), [(64, 64), (65535, 64), (4, 4)])
def test_path_id_over_the_limit(path_id: int, max_paths: int) -> None:
    server = make_server(max_paths=max_paths)
    with pytest.raises(RemoteProtocolError, match="path id") as info:
        server.receive_hello(make_client(path_id=path_id).hello())
    refused(info.value, AbortCode.TOO_MANY_PATHS)


def test_highest_path_id_is_accepted() -> None:
    cres, sres = run(make_client(path_id=63), make_server())
    assert cres.path_id == sres.path_id == 63


# -- sessions, replays ---------------------------------------------------------------------------------------------

def test_join_with_unknown_token() -> None:
    reg = Registry([TOKEN_A])
    server = make_server(None, reg)
    client = make_client(None, HelloKind.JOIN, b"\x99" * 16, path_id=1)
    with pytest.raises(AuthError, match="unknown session") as info:
        server.receive_hello(client.hello())
    refused(info.value, AbortCode.UNKNOWN_SESSION)
    assert reg.issued == [] and server.hello is None
    with pytest.raises(SessionAborted) as peer:
        client.receive_welcome(encode(Abort(AbortCode.UNKNOWN_SESSION, info.value.peer_reason)))
    assert peer.value.from_peer


def test_replayed_auth_fails_against_a_fresh_listener_nonce() -> None:
    """An eavesdropper who recorded a whole keyed JOIN handshake replays HELLO and AUTH to the listener."""
    reg = Registry([TOKEN_A])
    w = Wire()
    run(make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=2), make_server(KEY, reg), w)  # the genuine one
    replay = make_server(KEY, reg)  # fresh nonce
    replay.receive_hello(w.hello)
    assert replay.welcome() != w.welcome
    with pytest.raises(AuthError) as info:
        replay.receive_auth(w.auth)
    refused(info.value, AbortCode.AUTH)
    assert replay.result is None


def test_replay_with_the_same_listener_nonce_would_pass() -> None:
    """Shows that the listener's nonce is what defeats the replay above (so it must be fresh per connection)."""
    reg = Registry([TOKEN_A])
    snonce = b"\x77" * 16
    w = Wire()
    run(make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=2), make_server(KEY, reg, nonce=snonce), w)
    again = make_server(KEY, reg, nonce=snonce)
    again.receive_hello(w.hello)
    assert again.welcome() == w.welcome
    assert again.receive_auth(w.auth).token == TOKEN_A


def test_replayed_ready_fails_against_a_fresh_dialler_nonce() -> None:
    reg = Registry([TOKEN_A])
    snonce = b"\x78" * 16
    w = Wire()
    run(make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=2), make_server(KEY, reg, nonce=snonce), w)
    client = make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=2)  # a fresh nonce
    client.hello()
    client.receive_welcome(w.welcome)  # the recorded WELCOME, replayed by an impostor
    with pytest.raises(AuthError):
        client.receive_ready(w.ready)


def test_auth_for_another_path_id_is_refused() -> None:
    """An AUTH the key holder computed for path 1 cannot complete a handshake announced as path 3."""
    reg = Registry([TOKEN_A])
    cnonce, snonce = b"\x05" * 16, b"\x06" * 16
    w1 = Wire()
    run(make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=1, nonce=cnonce), make_server(KEY, reg, nonce=snonce), w1)
    server = make_server(KEY, reg, nonce=snonce)
    server.receive_hello(make_client(KEY, HelloKind.JOIN, TOKEN_A, path_id=3, nonce=cnonce).hello())
    server.welcome()
    with pytest.raises(AuthError):
        server.receive_auth(w1.auth)


def test_client_join_answered_with_another_token() -> None:
    client = make_client(None, HelloKind.JOIN, TOKEN_A, path_id=1)
    client.hello()
    bogus = encode(Welcome(b"\x55" * 16, b"\x01" * 16, SERVER_WINDOW, SERVER_CHUNK))
    with pytest.raises(RemoteProtocolError, match="another session") as info:
        client.receive_welcome(bogus)
    refused(info.value, AbortCode.PROTOCOL)


# -- frames out of order, ABORTs -----------------------------------------------------------------------------------

def test_out_of_order_frames() -> None:
    client = make_client()
    client.hello()
    with pytest.raises(RemoteProtocolError, match="expected") as info:
        client.receive_welcome(encode(Ready()))  # READY before WELCOME
    refused(info.value, AbortCode.PROTOCOL)
    server = make_server()
    with pytest.raises(RemoteProtocolError, match="expected") as info:
        server.receive_hello(encode(Auth(bytes(MAC_SIZE))))  # AUTH before HELLO
    refused(info.value, AbortCode.PROTOCOL)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_hello(encode(Abort(AbortCode.BUSY)))  # a listener's first frame is a HELLO, nothing else
    refused(info.value, AbortCode.PROTOCOL)
    server = make_server()
    server.receive_hello(make_client().hello())
    server.welcome()
    with pytest.raises(RemoteProtocolError, match="expected") as info:
        server.receive_auth(encode(Ping(1)))
    refused(info.value, AbortCode.PROTOCOL)
    client, server = make_client(), make_server()
    server.receive_hello(client.hello())
    welcome = server.welcome()
    client.receive_welcome(welcome)
    with pytest.raises(RemoteProtocolError, match="expected"):
        client.receive_ready(welcome)  # a second WELCOME


def test_garbage_and_truncated_frames() -> None:
    client, server = make_client(), make_server()
    hello = client.hello()
    for bad in (hello[:-1], hello + b"\0", hello[:4], b"", b"\xff" * 64):
        with pytest.raises(RemoteProtocolError) as info:
            make_server().receive_hello(bad)
        refused(info.value, AbortCode.PROTOCOL)
    server.receive_hello(hello)
    welcome = server.welcome()
    for bad in (welcome[:-1], welcome + b"\0", welcome[:HEADER_SIZE]):
        with pytest.raises(RemoteProtocolError):
            make_client().receive_welcome(bad)


def test_dialler_sees_abort() -> None:
    client = make_client()
    client.hello()
    with pytest.raises(SessionAborted, match="busy") as info:
        client.receive_welcome(encode(Abort(AbortCode.BUSY, "busy")))
    assert info.value.from_peer
    with pytest.raises(AuthError) as info:
        client.receive_welcome(encode(Abort(AbortCode.AUTH, "no")))
    assert info.value.from_peer
    client, server = make_client(), make_server()
    server.receive_hello(client.hello())
    client.receive_welcome(server.welcome())
    with pytest.raises(SessionAborted, match="busy") as info:  # an authenticated NEW may still find no slot
        client.receive_ready(encode(Abort(AbortCode.BUSY, "busy")))
    assert info.value.from_peer and client.result is None


def test_listener_sees_abort() -> None:
    """A dialler that refuses the WELCOME (bad parameters) says why instead of sending AUTH."""
    server = make_server()
    server.receive_hello(make_client().hello())
    server.welcome()
    with pytest.raises(SessionAborted, match="window") as info:
        server.receive_auth(encode(Abort(AbortCode.PROTOCOL, "the listener advertises a window of 0 bytes")))
    assert info.value.from_peer and server.result is None


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        ClientHandshake(key=None, kind=HelloKind.NEW, token=bytes(16), path_id=0, nonce=b"short",
                        window=CLIENT_WINDOW, max_chunk=CLIENT_CHUNK)
    with pytest.raises(ValueError):
        ClientHandshake(key=None, kind=HelloKind.NEW, token=b"short", path_id=0, nonce=bytes(16),
                        window=CLIENT_WINDOW, max_chunk=CLIENT_CHUNK)
