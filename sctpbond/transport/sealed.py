"""A Channel wrapper that seals (or, with --no-encrypt, authenticates) every frame after a keyed handshake
(proto.crypto does the cryptography).

Transport-independent: TCP and SCTP channels are wrapped the same way, and the runtime above sees plain frames.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from ..errors import IntegrityError, RemoteProtocolError
from ..proto.crypto import Opener, Sealer
from ..proto.frames import SESSION, Expect
from .base import Buffer, Channel, ChannelWrapper


class SealedChannel(ChannelWrapper):
    def __init__(self, inner: Channel, send_key: bytes, recv_key: bytes, encrypt: bool = True) -> None:
        super().__init__(inner)
        # TCP delivers in order: every sequence number must be the next one (a frame dropped or reordered on the
        # way fails the path); SCTP's unordered streams need the replay window.
        self._sealer = Sealer(send_key, encrypt)
        self._opener = Opener(recv_key, encrypt=encrypt, in_order=inner.transport == "tcp")
        self._send_lock = threading.Lock()  # the sequence number and the send order must agree (TCP)

    def send(self, parts: Sequence[Buffer], data: bool = False) -> None:
        with self._send_lock:
            self.inner.send(self._sealer.seal(parts), data=data)

    def recv(self, expect: Expect = SESSION) -> memoryview | None:
        try:
            buf = self.inner.recv(self._opener.expect)
        except RemoteProtocolError as exc:  # the outer header itself is not what was agreed: altered on the wire
            raise IntegrityError(f"a frame not protected as agreed on this path ({exc})") from None
        return None if buf is None else self._opener.open(buf, expect)

    def info(self) -> dict:
        if self._sealer.encrypt:
            return {**self.inner.info(), "encrypted": "aes-256-gcm"}
        return {**self.inner.info(), "authenticated": "aes-256-gmac"}


class FlipOnce(ChannelWrapper):
    """Test hook (SCTPBOND_TEST_FLIP_DATA=N): flips one bit in the Nth DATA frame this process puts on the wire,
    below the sealing, as a faulty link or a meddling router would. Lets tests prove that corruption is caught by
    the AEAD (keyed) or the end-to-end digest (no key). Never set outside tests."""

    _count = 0  # per process: DATA frames seen on every path
    _lock = threading.Lock()

    def __init__(self, inner: Channel, nth: int) -> None:
        super().__init__(inner)
        self.nth = nth

    def send(self, parts: Sequence[Buffer], data: bool = False) -> None:
        if data:
            with FlipOnce._lock:
                FlipOnce._count += 1
                hit = FlipOnce._count == self.nth
            if hit:
                last = bytearray(parts[-1])  # a copy: the send buffer keeps the true bytes for resends
                last[len(last) // 2] ^= 0x10
                parts = (*parts[:-1], last)
        self.inner.send(parts, data)


def secure(channel: Channel, keys: tuple[bytes, bytes] | None, encrypt: bool = True) -> Channel:
    """The channel to use after the handshake: sealed (or authenticated in clear) when keys were agreed."""
    flip = os.environ.get("SCTPBOND_TEST_FLIP_DATA")
    if flip:
        channel = FlipOnce(channel, int(flip))
    return channel if keys is None else SealedChannel(channel, *keys, encrypt=encrypt)
