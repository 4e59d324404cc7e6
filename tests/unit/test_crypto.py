"""AEAD protection of frames (proto/crypto.py): SEALED (AES-256-GCM) and AUTHED (in clear, GMAC tag), the keys
the keyed handshake derives for them, and the SealedChannel that applies them (transport/sealed.py).

What the receiver must tell apart (docs/wire-format.md, "Sealed and authenticated frames"): a frame that is not
protected as agreed, fails its tag or is replayed is an IntegrityError (the runtime fails the path); an authentic
frame whose inner frame is of a type the session does not expect is a RemoteProtocolError (the peer itself broke
the protocol: the session is aborted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from sctpbond.errors import AuthError, IntegrityError, RemoteProtocolError
from sctpbond.proto.crypto import SEAL_OVERHEAD, Opener, ReplayWindow, Sealer
from sctpbond.proto.frames import (
    HEADER,
    SESSION,
    Abort,
    AbortCode,
    Ack,
    Auth,
    Data,
    Fin,
    FrameType,
    Hello,
    HelloKind,
    Ping,
    Ready,
    Welcome,
    data_prefix,
    decode,
    encode,
    encode_parts,
)
from sctpbond.proto.handshake import path_keys
from sctpbond.transport.base import Buffer, Channel
from sctpbond.transport.sealed import SealedChannel, secure
from tests.unit.test_handshake import KEY, Registry, Wire, make_client, make_server, run

K1, K2 = bytes(range(32)), bytes(range(32, 64))
MODES = pytest.mark.parametrize("encrypt", [True, False], ids=["sealed", "authed"])


def joined(parts: Sequence[Buffer]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def protect(frame, key: bytes = K1, encrypt: bool = True, sealer: Sealer | None = None) -> bytes:
    return joined((sealer or Sealer(key, encrypt)).seal(encode_parts(frame)))


# -- golden bytes -----------------------------------------------------------------------------------------------------

def test_golden_sealed_ping() -> None:
    """Byte layout: header(SEALED, 8 + 16 + 16) | seq | AES-256-GCM(PING frame) | tag."""
    head, body = Sealer(K1).seal((encode(Ping(7)),))
    assert bytes(head).hex() == "20000000" "00000028" "0000000000000000"
    assert len(body) == 16 + 16
    # Independent check of the ciphertext with the primitive, nonce = 4 zero bytes + seq, AAD = header + seq.
    assert AESGCM(K1).decrypt(bytes(12), bytes(body), bytes(head)) == encode(Ping(7))


def test_golden_authed_ping() -> None:
    """Byte layout: header(AUTHED, 8 + 16 + 16) | seq | PING frame in clear | GMAC tag over all that."""
    sealer = Sealer(K1, encrypt=False)
    sealer.seal((encode(Ping(1)),))  # seq 0
    parts = sealer.seal((encode(Ping(7)),))  # seq 1
    head, inner, tag = parts
    assert bytes(head).hex() == "21000000" "00000028" "0000000000000001"
    assert bytes(inner) == encode(Ping(7)) == bytes.fromhex("13000000 00000008 0000000000000007")
    # GMAC = AES-GCM of an empty plaintext, the whole frame before the tag as associated data
    nonce = bytes(4) + (1).to_bytes(8, "big")
    assert bytes(tag) == AESGCM(K1).encrypt(nonce, b"", bytes(head) + encode(Ping(7)))
    assert len(joined(parts)) == SEAL_OVERHEAD + len(encode(Ping(7)))


# -- round trips ------------------------------------------------------------------------------------------------------

@MODES
def test_round_trip_with_split_data_parts_and_sequence_numbers(encrypt: bool) -> None:
    sealer, opener = Sealer(K1, encrypt), Opener(K1, encrypt=encrypt)
    payload = bytes(range(256)) * 40
    for i in range(5):
        parts = sealer.seal((data_prefix(1000 * i, len(payload)), memoryview(payload)))
        wire = joined(parts)
        assert int.from_bytes(wire[8:16], "big") == i
        assert wire[0] == (FrameType.SEALED if encrypt else FrameType.AUTHED)
        assert len(wire) == SEAL_OVERHEAD + 16 + len(payload)
        frame = decode(opener.open(wire), SESSION)
        assert isinstance(frame, Data) and frame.offset == 1000 * i and bytes(frame.payload) == payload


@MODES
def test_every_session_frame_round_trips(encrypt: bool) -> None:
    sealer, opener = Sealer(K2, encrypt), Opener(K2, encrypt=encrypt)
    for frame in (Data(7, b"x"), Ack(9, ((0, 1), (3, 2)), True), Fin(3, b"\x01" * 16), Ping(1),
                  Abort(AbortCode.INTEGRITY, "digest")):
        wire = protect(frame, sealer=sealer)
        assert decode(opener.open(wire)) == frame


@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=5), st.booleans())
@settings(max_examples=100, deadline=None)
def test_multi_part_frames_round_trip(pieces: list[bytes], encrypt: bool) -> None:
    """However a frame is cut into parts (header, payload pieces), the receiver gets it whole."""
    body = b"".join(pieces)
    if not body:
        pieces, body = [b"!"], b"!"
    parts = (data_prefix(123, len(body)), *pieces)
    wire = joined(Sealer(K1, encrypt).seal(parts))
    frame = decode(Opener(K1, encrypt=encrypt).open(wire))
    assert frame == Data(123, body)


def test_authed_frames_are_in_clear_and_not_copied() -> None:
    """--no-encrypt: the payload goes on the wire as it is (the very buffers the caller gave), only tagged."""
    payload = memoryview(b"this text is readable by anyone on the path " * 100)
    prefix = data_prefix(0, len(payload))
    parts = Sealer(K1, encrypt=False).seal((prefix, payload))
    assert parts[1] is prefix and parts[2] is payload  # handed to sendmsg, never copied
    wire = joined(parts)
    assert bytes(payload) in wire
    sealed_wire = joined(Sealer(K1).seal((prefix, payload)))
    assert b"this text is readable" not in sealed_wire  # while SEALED hides it
    assert len(wire) == len(sealed_wire)  # same overhead either way


# -- what the receiver refuses ----------------------------------------------------------------------------------------

DATA_FRAME = Data(0x0102030405060708, b"payload bytes!")
FIELDS = {"header": range(0, 8), "seq": range(8, 16), "inner header": range(16, 24), "offset": range(24, 32),
          "payload": range(32, 32 + 14), "tag": range(32 + 14, 32 + 14 + 16)}


@MODES
@pytest.mark.parametrize("field", list(FIELDS))
def test_any_altered_byte_is_an_integrity_error(encrypt: bool, field: str) -> None:
    wire = protect(DATA_FRAME, encrypt=encrypt)
    assert len(wire) == 32 + 14 + 16
    assert decode(Opener(K1, encrypt=encrypt).open(wire)) == DATA_FRAME
    for pos in FIELDS[field]:
        for bits in (0x01, 0x80):
            bad = bytearray(wire)
            bad[pos] ^= bits
            with pytest.raises(IntegrityError):
                Opener(K1, encrypt=encrypt).open(bad)


@MODES
def test_truncated_or_extended_frames_are_integrity_errors(encrypt: bool) -> None:
    wire = protect(DATA_FRAME, encrypt=encrypt)
    for bad in (wire[:-1], wire + b"\0", wire[:16], wire[:7], b""):
        with pytest.raises(IntegrityError):
            Opener(K1, encrypt=encrypt).open(bad)


@MODES
def test_wrong_key_is_an_integrity_error(encrypt: bool) -> None:
    with pytest.raises(IntegrityError, match="failed authentication"):
        Opener(K2, encrypt=encrypt).open(protect(Ping(1), encrypt=encrypt))


@MODES
def test_plain_frame_on_a_protected_path_is_an_integrity_error(encrypt: bool) -> None:
    for frame in (Ping(1), DATA_FRAME, Abort(AbortCode.CANCELLED, "injected")):
        with pytest.raises(IntegrityError, match="not protected as agreed"):
            Opener(K1, encrypt=encrypt).open(encode(frame))


def test_the_other_protection_is_an_integrity_error() -> None:
    """A path agreed to seal does not take AUTHED frames (a downgrade to clear text), nor the reverse."""
    with pytest.raises(IntegrityError, match="not protected as agreed"):
        Opener(K1, encrypt=True).open(protect(Ping(1), encrypt=False))
    with pytest.raises(IntegrityError, match="not protected as agreed"):
        Opener(K1, encrypt=False).open(protect(Ping(1), encrypt=True))


@MODES
def test_protected_frame_on_a_plain_path_is_refused(encrypt: bool) -> None:
    with pytest.raises(RemoteProtocolError, match="expected"):
        decode(protect(Ping(1), encrypt=encrypt), SESSION)
    with pytest.raises(RemoteProtocolError, match="without a key"):
        decode(protect(Ping(1), encrypt=encrypt))


@MODES
@pytest.mark.parametrize("inner", [
    Hello(HelloKind.JOIN, 1, bytes(16), bytes(16), 1 << 20, 65536, keyed=True),
    Welcome(bytes(16), bytes(16), 1 << 20, 65536),
    Auth(bytes(32)),
    Ready(bytes(32)),
], ids=["hello", "welcome", "auth", "ready"])
def test_authentic_unexpected_inner_frame_is_a_protocol_error(encrypt: bool, inner) -> None:
    """Only our peer can make an authentic frame: a handshake frame inside one is the peer's protocol violation
    (the session is aborted), not an integrity failure (which would only fail the path)."""
    with pytest.raises(RemoteProtocolError, match="expected") as info:
        Opener(K1, encrypt=encrypt).open(protect(inner, encrypt=encrypt))
    assert type(info.value) is RemoteProtocolError


@MODES
def test_authentic_inner_frame_outside_a_narrower_expect(encrypt: bool) -> None:
    opener = Opener(K1, encrypt=encrypt)
    sealer = Sealer(K1, encrypt)
    assert decode(opener.open(protect(Ping(1), sealer=sealer), frozenset({FrameType.PING}))) == Ping(1)
    with pytest.raises(RemoteProtocolError) as info:
        opener.open(protect(Ping(2), sealer=sealer), frozenset({FrameType.DATA}))
    assert type(info.value) is RemoteProtocolError


@MODES
def test_authentic_nonsense_inside_is_a_protocol_error(encrypt: bool) -> None:
    """A nested protected frame or an unknown inner type: the peer's fault."""
    nested = protect(Ping(1), encrypt=encrypt)
    for inner in (nested, HEADER.pack(99, 0, 0, 0), HEADER.pack(FrameType.PING, 1, 0, 0)):
        with pytest.raises(RemoteProtocolError) as info:
            Opener(K1, encrypt=encrypt).open(joined(Sealer(K1, encrypt).seal((inner,))))
        assert type(info.value) is RemoteProtocolError
    # fewer bytes than a header inside: the outer frame is already below its minimum length
    with pytest.raises(IntegrityError):
        Opener(K1, encrypt=encrypt).open(joined(Sealer(K1, encrypt).seal((b"abc",))))


@MODES
def test_replay_is_refused_but_reordering_is_accepted(encrypt: bool) -> None:
    sealer = Sealer(K1, encrypt)
    f = [protect(Ping(i), sealer=sealer) for i in range(5)]
    opener = Opener(K1, encrypt=encrypt)
    for i in (2, 0, 4, 1, 3):  # SCTP's unordered streams may reorder
        assert decode(opener.open(f[i])) == Ping(i)
    for i in range(5):
        with pytest.raises(IntegrityError, match="replayed"):
            opener.open(f[i])


def test_a_forged_frame_does_not_burn_its_sequence_number() -> None:
    """The replay window records a number only once the tag verified: garbage with seq 0 cannot block seq 0."""
    good = protect(Ping(1))
    forged = bytearray(good)
    forged[-1] ^= 1
    opener = Opener(K1)
    with pytest.raises(IntegrityError):
        opener.open(forged)
    assert decode(opener.open(good)) == Ping(1)


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


@given(st.binary(max_size=200), st.booleans())
@settings(max_examples=300, deadline=None)
def test_opener_turns_any_bytes_into_an_integrity_error(data: bytes, encrypt: bool) -> None:
    with pytest.raises(IntegrityError):
        Opener(K1, encrypt=encrypt).open(data)


# -- key derivation in the handshake ---------------------------------------------------------------------------------

def test_path_keys_are_hkdf_over_key_nonces_and_transcript() -> None:
    cn, sn, t = b"c" * 16, b"s" * 16, b"transcript bytes"
    a = path_keys(KEY, cn, sn, t)
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=cn + sn,
               info=b"sctpbond v2 path keys" + hashlib.sha256(t).digest()).derive(KEY)
    assert a == (okm[:32], okm[32:])
    assert a[0] != a[1] and all(len(k) == 32 for k in a)
    assert path_keys(KEY, b"C" * 16, sn, t) != a  # fresh client nonce
    assert path_keys(KEY, cn, b"S" * 16, t) != a  # fresh server nonce
    assert path_keys(KEY, cn, sn, t + b"!") != a  # another transcript (path id, parameters, addresses ...)
    assert path_keys(b"other key of 16+ bytes", cn, sn, t) != a


def test_handshake_keys_come_from_the_whole_transcript() -> None:
    w = Wire()
    client, server = make_client(KEY), make_server(KEY)
    cres, _ = run(client, server, w)
    assert cres.keys == path_keys(KEY, client.nonce, server.nonce, w.hello + w.welcome + w.auth)


@MODES
def test_keyed_handshake_agrees_on_crossed_keys(encrypt: bool) -> None:
    client, server = run(make_client(KEY, encrypt=encrypt), make_server(KEY, require_encrypt=encrypt))
    assert client.keys is not None and server.keys is not None
    assert client.keys == (server.keys[1], server.keys[0])
    assert client.encrypt == server.encrypt == encrypt
    c2s = protect(Ping(5), client.keys[0], client.encrypt)
    assert decode(Opener(server.keys[1], encrypt=server.encrypt).open(c2s)) == Ping(5)
    s2c = protect(Ping(6), server.keys[0], server.encrypt)
    assert decode(Opener(client.keys[1], encrypt=client.encrypt).open(s2c)) == Ping(6)
    with pytest.raises(IntegrityError):  # a frame sent back to its sender (reflection) does not open
        Opener(client.keys[1], encrypt=encrypt).open(c2s)


def test_no_key_means_no_keys() -> None:
    client, server = run(make_client(None), make_server(None))
    assert client.keys is None and server.keys is None
    assert not client.encrypt and not server.encrypt


def test_no_encrypt_client_is_refused_by_an_encrypting_listener() -> None:
    with pytest.raises(AuthError, match="requires encryption"):
        make_server(KEY).receive_hello(make_client(KEY, encrypt=False).hello())


def test_no_encrypt_listener_follows_the_dialler() -> None:
    for encrypt in (False, True):
        c, s = run(make_client(KEY, encrypt=encrypt), make_server(KEY, require_encrypt=False))
        assert c.keys is not None and s.keys is not None  # AUTHED frames are keyed as well
        assert c.encrypt == s.encrypt == encrypt


def test_stripping_the_encrypt_flag_breaks_the_handshake() -> None:
    """An on-path attacker who clears HELLO's ENCRYPT flag (to downgrade to clear text) changes the transcript,
    so the listener refuses the dialler's AUTH."""
    client, server = make_client(KEY), make_server(KEY, require_encrypt=False)
    hello = client.hello()
    assert decode(hello).encrypt
    stripped = bytearray(hello)
    stripped[8 + 7] &= ~0x02
    assert not server.receive_hello(bytes(stripped)).encrypt
    auth = client.receive_welcome(server.welcome())
    with pytest.raises(AuthError):
        server.receive_auth(auth)
    assert server.result is None


def test_a_join_gets_its_own_keys() -> None:
    reg = Registry()
    first, _ = run(make_client(KEY), make_server(KEY, reg))
    join, _ = run(make_client(KEY, kind=HelloKind.JOIN, token=first.token, path_id=1), make_server(KEY, reg))
    assert join.keys is not None and first.keys is not None and set(join.keys).isdisjoint(first.keys)


# -- the channel wrapper -----------------------------------------------------------------------------------------------

class Pipe(Channel):
    """One direction of an in-memory connection: what is sent is received, frame by frame."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, parts: Sequence[Buffer], data: bool = False) -> None:
        self.frames.append(joined(parts))

    def recv(self, expect=SESSION) -> memoryview | None:
        return memoryview(self.frames.pop(0)) if self.frames else None

    def shutdown_write(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


@MODES
def test_sealed_channel(encrypt: bool) -> None:
    pipe = Pipe()
    tx = secure(pipe, (K1, K2), encrypt)
    rx = SealedChannel(pipe, K2, K1, encrypt)
    assert isinstance(tx, SealedChannel)
    assert ("aes-256-gcm" if encrypt else "aes-256-gmac") in tx.info().values()
    tx.send(encode_parts(DATA_FRAME), data=True)
    tx.send(encode_parts(Ping(3)))
    assert pipe.frames[0][0] == (FrameType.SEALED if encrypt else FrameType.AUTHED)
    assert decode(rx.recv()) == DATA_FRAME and decode(rx.recv()) == Ping(3)
    assert rx.recv() is None
    pipe.send(encode_parts(Ping(4)))  # injected in clear under the sealing
    with pytest.raises(IntegrityError):
        rx.recv()
    assert secure(pipe, None) is pipe  # no key, no wrapper
