"""Per-connection handshake: HELLO -> WELCOME -> AUTH -> READY (docs/wire-format.md).

Every connection (the first path and every path that joins later) runs the same four frames. The first path
asks for a NEW session and receives its random 128-bit token; later paths JOIN by presenting it. With a
pre-shared key, both sides prove knowledge of the key with HMAC-SHA256 over both fresh nonces, the token, the
path id and the kind, so a captured handshake cannot be replayed and a stranger cannot attach a path.
Randomness is passed in (nonces, tokens) so these objects stay deterministic and testable.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AuthError, RemoteProtocolError, SessionAborted
from .frames import (
    MAC_SIZE,
    NONCE_SIZE,
    TOKEN_SIZE,
    Abort,
    AbortCode,
    Auth,
    Frame,
    Hello,
    HelloKind,
    Ready,
    Welcome,
)

_ZERO_MAC = bytes(MAC_SIZE)
_ZERO_TOKEN = bytes(TOKEN_SIZE)


def proof(key: bytes, role: bytes, cnonce: bytes, snonce: bytes, token: bytes, path_id: int, kind: int,
          flags: int = 0, addresses: tuple[str, ...] = ()) -> bytes:
    """HMAC-SHA256 binding the key to this very handshake; role separates the two directions. The HELLO flags
    are covered so that an on-path attacker cannot strip the request for encryption, and the server's proof
    covers the addresses it advertises, so nobody can steer the client's automatic paths elsewhere."""
    msg = b"sctpbond v1 " + role + cnonce + snonce + token + struct.pack("!HB", path_id, kind)
    if flags:
        msg += struct.pack("!H", flags)
    if addresses:  # canonical text, as the peer decodes it from the wire
        msg += ",".join(str(ipaddress.ip_address(a)) for a in addresses).encode()
    return hmac.new(key, msg, hashlib.sha256).digest()


def path_keys(key: bytes, cnonce: bytes, snonce: bytes, token: bytes, path_id: int) -> tuple[bytes, bytes]:
    """Per-connection AES-256 keys (client->server, server->client), derived with HKDF-SHA256 from the pre-shared
    key and this handshake's two fresh nonces: every path connection, and every re-join, gets fresh keys."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = b"sctpbond v1 path keys" + token + struct.pack("!H", path_id)
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=cnonce + snonce, info=info).derive(key)
    return okm[:32], okm[32:]


@dataclass(frozen=True)
class Negotiated:
    token: bytes
    path_id: int
    kind: HelloKind
    peer_window: int
    peer_max_chunk: int
    peer_addresses: tuple[str, ...] = ()
    keys: tuple[bytes, bytes] | None = None  # (send, receive) AEAD keys when frames are sealed, else None


def _raise_abort(frame: Abort) -> None:
    if frame.code == AbortCode.AUTH:
        raise AuthError(f"peer refused authentication: {frame.reason}")
    raise SessionAborted(f"peer aborted: {frame.reason or frame.code.name.lower()}")


class ClientHandshake:
    """Dialling side. start() gives HELLO; receive(WELCOME) gives AUTH; receive(READY) finishes."""

    def __init__(self, *, key: bytes | None, kind: HelloKind, token: bytes, path_id: int, nonce: bytes,
                 window: int, max_chunk: int, encrypt: bool = True) -> None:
        if len(nonce) != NONCE_SIZE or len(token) != TOKEN_SIZE:
            raise ValueError("bad nonce or token size")
        self.key, self.kind, self.token, self.path_id = key, kind, token, path_id
        self.encrypt = encrypt and key is not None
        self.nonce, self.window, self.max_chunk = nonce, window, max_chunk
        self.result: Negotiated | None = None
        self._welcome: Welcome | None = None

    def start(self) -> Hello:
        return Hello(self.kind, self.path_id, self.token, self.nonce, self.window, self.max_chunk, self.key is not None,
                     encrypt=self.encrypt)

    def receive(self, frame: Frame) -> Frame | None:
        """Returns the frame to send back, or None. Raises AuthError/SessionAborted/RemoteProtocolError."""
        if isinstance(frame, Abort):
            _raise_abort(frame)
        if self._welcome is None:
            if not isinstance(frame, Welcome):
                raise RemoteProtocolError(f"expected WELCOME, got {type(frame).__name__.upper()}")
            if self.kind == HelloKind.JOIN and frame.token != self.token:
                raise RemoteProtocolError("listener answered a join with another session's token")
            if self.key is not None:
                flags = self.start().flags
                expected = proof(self.key, b"server", self.nonce, frame.nonce, frame.token, self.path_id, self.kind,
                                 flags, frame.addresses)
                if not hmac.compare_digest(expected, frame.mac):
                    raise AuthError("authentication failed: the listener does not have the same key")
                mac = proof(self.key, b"client", self.nonce, frame.nonce, frame.token, self.path_id, self.kind, flags)
            else:
                mac = _ZERO_MAC
            self._welcome = frame
            return Auth(mac)
        if not isinstance(frame, Ready):
            raise RemoteProtocolError(f"expected READY, got {type(frame).__name__.upper()}")
        w = self._welcome
        keys = None
        if self.encrypt:
            assert self.key is not None  # encrypt is set only with a key
            c2s, s2c = path_keys(self.key, self.nonce, w.nonce, w.token, self.path_id)
            keys = (c2s, s2c)
        self.result = Negotiated(w.token, self.path_id, self.kind, w.window, w.max_chunk, w.addresses, keys)
        return None


class ServerHandshake:
    """Listening side. receive(HELLO) gives WELCOME (or ABORT); receive(AUTH) gives READY (or ABORT).

    `new_token()` supplies a token for a NEW session; `knows(token)` says whether a JOIN names a live session.
    A failure raises after `reply` holds the ABORT to send, so the runtime can tell the peer why.
    """

    def __init__(self, *, key: bytes | None, nonce: bytes, window: int, max_chunk: int,
                 new_token: Callable[[], bytes], knows: Callable[[bytes], bool],
                 addresses: tuple[str, ...] = (), require_encrypt: bool = True) -> None:
        self.key, self.nonce, self.window, self.max_chunk = key, nonce, window, max_chunk
        self.require_encrypt = require_encrypt and key is not None
        self._new_token, self._knows, self.addresses = new_token, knows, addresses
        self.hello: Hello | None = None
        self.token = _ZERO_TOKEN
        self.result: Negotiated | None = None
        self.reply: Frame | None = None

    def _fail(self, exc: Exception, code: AbortCode, reason: str) -> None:
        self.reply = Abort(code, reason)
        raise exc

    def receive(self, frame: Frame) -> Frame:
        if isinstance(frame, Abort):
            _raise_abort(frame)
        if self.hello is None:
            return self._on_hello(frame)
        if not isinstance(frame, Auth):
            self._fail(RemoteProtocolError("expected AUTH"), AbortCode.PROTOCOL, "expected AUTH")
        assert isinstance(frame, Auth)
        if self.key is not None:
            h = self.hello
            expected = proof(self.key, b"client", h.nonce, self.nonce, self.token, h.path_id, h.kind, h.flags)
            if not hmac.compare_digest(expected, frame.mac):
                self._fail(AuthError("authentication failed: a peer presented a wrong key"), AbortCode.AUTH,
                           "wrong key")
        h = self.hello
        keys = None
        if h.encrypt and self.key is not None:
            c2s, s2c = path_keys(self.key, h.nonce, self.nonce, self.token, h.path_id)
            keys = (s2c, c2s)
        self.result = Negotiated(self.token, h.path_id, h.kind, h.window, h.max_chunk, keys=keys)
        return Ready()

    def _on_hello(self, frame: Frame) -> Frame:
        if not isinstance(frame, Hello):
            self._fail(RemoteProtocolError("connection did not start with HELLO"), AbortCode.PROTOCOL,
                       "expected HELLO")
        assert isinstance(frame, Hello)
        if frame.keyed != (self.key is not None):
            why = ("the listener requires a key (--key-file / SCTPBOND_KEY)" if self.key is not None
                   else "the listener has no key; give it the same --key-file")
            self._fail(AuthError(f"authentication failed: {why}"), AbortCode.AUTH, why)
        if self.require_encrypt and not frame.encrypt:
            why = "the listener requires encryption; drop --no-encrypt or start the listener with it"
            self._fail(AuthError(f"refused: {why}"), AbortCode.AUTH, why)
        if frame.kind == HelloKind.NEW:
            self.token = self._new_token()
        elif self._knows(frame.token):
            self.token = frame.token
        else:
            self._fail(AuthError("a path tried to join an unknown session"), AbortCode.UNKNOWN_SESSION,
                       "unknown session token")
        self.hello = frame
        mac = (proof(self.key, b"server", frame.nonce, self.nonce, self.token, frame.path_id, frame.kind, frame.flags,
                     self.addresses) if self.key is not None else _ZERO_MAC)
        return Welcome(self.token, self.nonce, self.window, self.max_chunk, mac, self.addresses)
