"""AEAD protection of frames after a keyed handshake (AES-256-GCM, docs/security.md): sealed (encrypted, the
default) or authenticated in clear (`--no-encrypt`: the same GCM tag over the frame as associated data, GMAC).

Each path connection has its own pair of keys (proto.handshake.path_keys), so a frame is sealed by the
connection that carries it: a chunk resent on another path is a new frame under that path's key and sequence, and
a (key, nonce) pair is never used twice. The GCM nonce is the frame's explicit 64-bit sequence number; it travels
in the clear because SCTP delivers the data streams unordered, so the receiver cannot count. A sliding window
rejects a sequence number seen before (replay). The outer header and the sequence number are associated data.

    SEALED frame = header(type SEALED, body length) | seq u64 | AES-GCM(inner frame incl. its header) | tag 16
    AUTHED frame = header(type AUTHED, body length) | seq u64 | inner frame (clear)              | tag 16

Pure computation: no sockets, clocks or threads.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from .frames import (
    HEADER,
    HEADER_SIZE,
    SEAL_SEQ_SIZE,
    SEAL_TAG_SIZE,
    SESSION,
    Buffer,
    Expect,
    FrameType,
    parse_header,
    split_frame,
)

_SEQ = struct.Struct("!Q")
_NONCE_PAD = bytes(4)
SEAL_OVERHEAD = HEADER_SIZE + SEAL_SEQ_SIZE + SEAL_TAG_SIZE
REPLAY_WINDOW = 1 << 14  # frames; SCTP's unordered streams reorder far less than this


class Sealer:
    """Seals (encrypt=True) or authenticates (False) the frames one side sends on one path connection."""

    def __init__(self, key: bytes, encrypt: bool = True) -> None:
        self._key, self._aead = key, AESGCM(key)
        self.encrypt = encrypt
        self._kind = FrameType.SEALED if encrypt else FrameType.AUTHED
        self._seq = 0

    def seal(self, parts: Sequence[Buffer]) -> tuple[Buffer, ...]:
        """The protected frame for the inner frame made of `parts`, as buffers for one sendmsg."""
        seq = self._seq
        if seq >= 1 << 64:
            raise LocalProtocolError("sequence numbers exhausted on this path")  # 2^64 frames: never in practice
        self._seq = seq + 1
        size = sum(len(p) for p in parts)
        head = HEADER.pack(self._kind, 0, 0, SEAL_SEQ_SIZE + size + SEAL_TAG_SIZE) + _SEQ.pack(seq)
        nonce = _NONCE_PAD + head[HEADER_SIZE:]
        if self.encrypt:
            plain = parts[0] if len(parts) == 1 else b"".join(parts)
            return head, self._aead.encrypt(nonce, plain, head)
        # GMAC: the whole frame is associated data, fed part by part so a payload is never copied.
        tagger = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        tagger.authenticate_additional_data(head)
        for part in parts:
            tagger.authenticate_additional_data(part)
        tagger.finalize()
        return (head, *parts, tagger.tag)


class ReplayWindow:
    """Accepts each sequence number once; numbers older than the window are refused."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.top = -1  # highest number accepted
        self._seen = 0  # bit i: top - i was accepted

    def check(self, seq: int) -> None:
        if seq > self.top:
            return
        age = self.top - seq
        if age >= self.size or self._seen >> age & 1:
            raise IntegrityError("a sealed frame was replayed (sequence number seen before)")

    def accept(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self._seen = ((self._seen << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = seq
        else:
            self._seen |= 1 << (self.top - seq)


class Opener:
    """Opens the sealed (or authenticated) frames one side receives on one path connection."""

    def __init__(self, key: bytes, window: int = REPLAY_WINDOW, encrypt: bool = True, in_order: bool = False) -> None:
        self._key, self._aead = key, AESGCM(key)
        self.encrypt, self.in_order = encrypt, in_order
        self.expect: Expect = frozenset({FrameType.SEALED if encrypt else FrameType.AUTHED})
        self.replay = ReplayWindow(window)

    def open(self, buf: Buffer, expect: Expect = SESSION) -> memoryview:
        """The inner frame (header included) of one whole protected frame, which must be of a type in `expect`.
        IntegrityError when the frame is not protected as agreed, fails authentication or is a replay (the path
        cannot be trusted any more); RemoteProtocolError when an authentic frame is not one we expect."""
        try:
            split_frame(buf, self.expect)
        except RemoteProtocolError as exc:
            raise IntegrityError(f"a frame not protected as agreed on this path ({exc})") from None
        view = memoryview(buf)
        head = view[: HEADER_SIZE + SEAL_SEQ_SIZE]
        (seq,) = _SEQ.unpack(head[HEADER_SIZE:])
        if self.in_order and seq != self.replay.top + 1:
            raise IntegrityError(f"sealed frame {seq} where {self.replay.top + 1} was due: a frame was dropped, "
                                 "reordered or replayed on the way")
        self.replay.check(seq)
        nonce = _NONCE_PAD + bytes(head[HEADER_SIZE:])
        try:
            if self.encrypt:
                inner = memoryview(self._aead.decrypt(nonce, view[len(head):], bytes(head)))
            else:
                tag = bytes(view[-SEAL_TAG_SIZE:])
                checker = Cipher(algorithms.AES(self._key), modes.GCM(nonce, tag)).decryptor()
                checker.authenticate_additional_data(view[:-SEAL_TAG_SIZE])
                checker.finalize()
                inner = view[len(head) : -SEAL_TAG_SIZE]
        except InvalidTag:
            raise IntegrityError("a frame failed authentication: altered on the wire, or not from our peer") from None
        self.replay.accept(seq)
        parse_header(inner[:HEADER_SIZE], expect)  # BODY_LIMITS leave at least a header inside
        return inner
