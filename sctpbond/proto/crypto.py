"""AEAD sealing of frames after a keyed handshake (AES-256-GCM, docs/security.md).

Each path connection has its own pair of keys (proto.handshake.path_keys), so a frame is sealed by the
connection that carries it: a chunk resent on another path is a new frame under that path's key and sequence, and
a (key, nonce) pair is never used twice. The GCM nonce is the frame's explicit 64-bit sequence number; it travels
in the clear because SCTP delivers the data streams unordered, so the receiver cannot count. A sliding window
rejects a sequence number seen before (replay). The outer header and the sequence number are associated data.

    SEALED frame = header(type SEALED, body length) | seq u64 | AES-GCM(inner frame incl. its header) | tag 16

Pure computation: no sockets, clocks or threads.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from .frames import HEADER, HEADER_SIZE, SEAL_SEQ_SIZE, SEAL_TAG_SIZE, FrameType, parse_header

Buffer = bytes | bytearray | memoryview
_SEQ = struct.Struct("!Q")
_NONCE_PAD = bytes(4)
SEAL_OVERHEAD = HEADER_SIZE + SEAL_SEQ_SIZE + SEAL_TAG_SIZE
REPLAY_WINDOW = 1 << 14  # frames; SCTP's unordered streams reorder far less than this


class Sealer:
    """Seals the frames one side sends on one path connection."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._seq = 0

    def seal(self, parts: Sequence[Buffer]) -> tuple[bytes, bytes]:
        """The sealed frame for the inner frame made of `parts`, as (header + seq, ciphertext + tag)."""
        seq = self._seq
        if seq >= 1 << 64:
            raise LocalProtocolError("sequence numbers exhausted on this path")  # 2^64 frames: never in practice
        self._seq = seq + 1
        plain = parts[0] if len(parts) == 1 else b"".join(parts)
        head = HEADER.pack(FrameType.SEALED, 0, 0, SEAL_SEQ_SIZE + len(plain) + SEAL_TAG_SIZE) + _SEQ.pack(seq)
        return head, self._aead.encrypt(_NONCE_PAD + head[HEADER_SIZE:], plain, head)


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
    """Opens the sealed frames one side receives on one path connection."""

    def __init__(self, key: bytes, window: int = REPLAY_WINDOW) -> None:
        self._aead = AESGCM(key)
        self.replay = ReplayWindow(window)

    def open(self, buf: Buffer) -> memoryview:
        """The inner frame (header included) of one whole sealed frame. Raises RemoteProtocolError for anything
        that is not a sealed frame, IntegrityError when authentication fails or the frame is a replay."""
        view = memoryview(buf)
        if len(view) < HEADER_SIZE:
            raise RemoteProtocolError(f"truncated frame ({len(view)} bytes)")
        kind, length = parse_header(view[:HEADER_SIZE])
        if kind != FrameType.SEALED:
            raise IntegrityError(f"unencrypted {kind.name} frame on an encrypted path")
        if len(view) != HEADER_SIZE + length:
            raise RemoteProtocolError(f"SEALED frame length {length} does not match {len(view) - HEADER_SIZE}")
        head = view[: HEADER_SIZE + SEAL_SEQ_SIZE]
        (seq,) = _SEQ.unpack(head[HEADER_SIZE:])
        self.replay.check(seq)
        try:
            plain = self._aead.decrypt(_NONCE_PAD + bytes(head[HEADER_SIZE:]), view[len(head):], bytes(head))
        except InvalidTag:
            raise IntegrityError("a frame failed authentication: altered on the wire, or not from our peer") from None
        self.replay.accept(seq)
        return memoryview(plain)
