"""AEAD sealing of frames (proto/crypto.py) and the keyed handshake that derives its keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sctpbond.errors import AuthError, IntegrityError, ProtocolError
from sctpbond.proto.crypto import SEAL_OVERHEAD, Opener, ReplayWindow, Sealer
from sctpbond.proto.frames import (
    HELLO_FLAG_ENCRYPT,
    Data,
    HelloKind,
    Ping,
    Welcome,
    data_prefix,
    decode,
    encode,
)
from sctpbond.proto.handshake import path_keys
from tests.unit.test_handshake import KEY, Registry, make_client, make_server, run, wire

K1, K2 = bytes(range(32)), bytes(range(32, 64))


def test_golden_sealed_ping() -> None:
    """Byte layout: header(SEALED, 8 + 16 + 16) | seq | AES-256-GCM(PING frame) | tag."""
    head, body = Sealer(K1).seal((encode(Ping(7)),))
    assert head.hex() == "20000000" "00000028" "0000000000000000"
    assert len(body) == 16 + 16
    # Independent check of the ciphertext with the primitive, nonce = 4 zero bytes + seq, AAD = header + seq.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(K1).decrypt(bytes(12), body, head) == encode(Ping(7))


def test_round_trip_with_split_data_parts_and_sequence_numbers() -> None:
    sealer, opener = Sealer(K1), Opener(K1)
    payload = bytes(range(256)) * 40
    for i in range(5):
        head, body = sealer.seal((data_prefix(1000 * i, len(payload)), memoryview(payload)))
        assert int.from_bytes(head[8:16], "big") == i
        assert len(head) + len(body) == SEAL_OVERHEAD + 16 + len(payload)
        frame = decode(opener.open(head + body))
        assert isinstance(frame, Data) and frame.offset == 1000 * i and bytes(frame.payload) == payload


def sealed(seq_frames: int = 1, key: bytes = K1) -> list[bytes]:
    sealer = Sealer(key)
    return [b"".join(sealer.seal((encode(Ping(i)),))) for i in range(seq_frames)]


@pytest.mark.parametrize("pos", range(0, 8 + 8 + 16 + 16))
def test_any_flipped_byte_is_refused(pos: int) -> None:
    frame = bytearray(sealed()[0])
    frame[pos] ^= 0x01
    with pytest.raises(ProtocolError):
        Opener(K1).open(frame)


def test_wrong_key_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="failed authentication"):
        Opener(K2).open(sealed()[0])


def test_plain_frame_on_encrypted_path_is_refused() -> None:
    with pytest.raises(IntegrityError, match="unencrypted PING"):
        Opener(K1).open(encode(Ping(1)))


def test_sealed_frame_on_plain_path_is_refused() -> None:
    with pytest.raises(ProtocolError, match="encrypted frame"):
        decode(sealed()[0])


def test_replay_is_refused_but_reordering_is_accepted() -> None:
    f = sealed(5)
    opener = Opener(K1)
    for i in (2, 0, 4, 1, 3):  # SCTP's unordered streams may reorder
        assert decode(opener.open(f[i])) == Ping(i)
    for i in range(5):
        with pytest.raises(IntegrityError, match="replayed"):
            opener.open(f[i])


def test_replay_window_refuses_numbers_older_than_the_window() -> None:
    w = ReplayWindow(size=8)
    w.accept(100)
    w.check(93)  # inside the window, never seen
    with pytest.raises(IntegrityError):
        w.check(92)
    w.accept(95)
    with pytest.raises(IntegrityError):
        w.check(95)
    w.accept(200)  # a jump beyond the window forgets everything older
    with pytest.raises(IntegrityError):
        w.check(100)
    w.check(199)


@given(st.lists(st.integers(0, 300), max_size=200))
@settings(max_examples=200, deadline=None)
def test_replay_window_accepts_each_number_at_most_once(seqs: list[int]) -> None:
    w, accepted = ReplayWindow(size=64), set()
    for s in seqs:
        try:
            w.check(s)
        except IntegrityError:
            continue
        assert s not in accepted
        w.accept(s)
        accepted.add(s)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_opener_turns_any_bytes_into_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        Opener(K1).open(data)


# -- key derivation in the handshake ---------------------------------------------------------------------------------
def test_path_keys_are_per_direction_and_per_handshake() -> None:
    a = path_keys(KEY, b"c" * 16, b"s" * 16, b"t" * 16, 1)
    assert a[0] != a[1] and all(len(k) == 32 for k in a)
    assert a == path_keys(KEY, b"c" * 16, b"s" * 16, b"t" * 16, 1)
    assert path_keys(KEY, b"C" * 16, b"s" * 16, b"t" * 16, 1) != a  # fresh client nonce
    assert path_keys(KEY, b"c" * 16, b"S" * 16, b"t" * 16, 1) != a  # fresh server nonce
    assert path_keys(KEY, b"c" * 16, b"s" * 16, b"t" * 16, 2) != a  # another path
    assert path_keys(b"other", b"c" * 16, b"s" * 16, b"t" * 16, 1) != a


def test_keyed_handshake_agrees_on_crossed_keys() -> None:
    client, server = run(make_client(KEY), make_server(KEY))
    assert client.keys is not None and server.keys is not None
    assert client.keys == (server.keys[1], server.keys[0])
    head, body = Sealer(client.keys[0]).seal((encode(Ping(5)),))
    assert decode(Opener(server.keys[1]).open(head + body)) == Ping(5)


def test_no_key_means_no_encryption() -> None:
    client, server = run(make_client(None), make_server(None))
    assert client.keys is None and server.keys is None


def test_no_encrypt_client_is_refused_by_an_encrypting_listener() -> None:
    client = make_client(KEY)
    client.encrypt = False
    with pytest.raises(AuthError, match="requires encryption"):
        make_server(KEY).receive(wire(client.start()))


def test_no_encrypt_listener_accepts_both() -> None:
    for encrypt in (False, True):
        client = make_client(KEY)
        client.encrypt = encrypt
        server = make_server(KEY)
        server.require_encrypt = False
        c, s = run(client, server)
        assert (c.keys is not None) == encrypt and (s.keys is not None) == encrypt


def test_stripping_the_encrypt_flag_breaks_the_proofs() -> None:
    """An on-path attacker who clears HELLO's ENCRYPT flag (to downgrade to clear text) changes what the server
    proves, so the client refuses the WELCOME."""
    client, server = make_client(KEY), make_server(KEY)
    server.require_encrypt = False
    hello = wire(client.start())
    assert hello.flags & HELLO_FLAG_ENCRYPT
    stripped = type(hello)(**{**{f: getattr(hello, f) for f in hello.__slots__}, "encrypt": False})
    welcome = server.receive(stripped)
    assert isinstance(welcome, Welcome)
    with pytest.raises(AuthError):
        client.receive(wire(welcome))


def test_a_join_gets_its_own_keys() -> None:
    reg = Registry()
    first, _ = run(make_client(KEY), make_server(KEY, reg))
    join, _ = run(make_client(KEY, kind=HelloKind.JOIN, token=first.token, path_id=1), make_server(KEY, reg))
    assert join.keys is not None and set(join.keys).isdisjoint(first.keys)


def test_tampered_advertised_addresses_break_the_server_proof() -> None:
    """With a key, an on-path attacker cannot steer the client's automatic paths to its own addresses."""
    client, server = make_client(KEY), make_server(KEY, addresses=("10.0.0.1", "fd00::0001"))
    welcome = wire(server.receive(wire(client.start())))
    assert welcome.addresses == ("10.0.0.1", "fd00::1")  # canonical on the wire, and the proof agrees
    forged = Welcome(welcome.token, welcome.nonce, welcome.window, welcome.max_chunk, welcome.mac, ("192.0.2.66",))
    with pytest.raises(AuthError):
        make_client(KEY, nonce=client.nonce).receive(wire(forged))
    assert client.receive(welcome) is not None  # the genuine one passes
