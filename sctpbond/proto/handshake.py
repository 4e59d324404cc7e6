"""Per-connection handshake: HELLO -> WELCOME -> AUTH -> READY (docs/wire-format.md, version 2).

Every connection (the first path and every path that joins later) runs the same four frames. The first path
asks for a NEW session and receives its random 128-bit token; later paths JOIN by presenting it. With a
pre-shared key both sides prove knowledge of the key with HMAC-SHA256 over the whole **transcript** as it went
over the wire (as TLS 1.3's Finished does): no field of HELLO or WELCOME can be rewritten by an on-path attacker.
The dialler proves first (AUTH), the listener only after it checked that proof (READY), so a stranger who dials
a listener gets nothing computed from the key: no offline check of a guessed key.

Both objects are fed whole frames as bytes (the transcript needs them as sent) and return the bytes to send.
Randomness is passed in (nonces, tokens) so they stay deterministic and testable. A refusal raises an error whose
`abort_code` and `peer_reason` say what to tell the peer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AuthError, LocalProtocolError, ProtocolError, RemoteProtocolError, SessionAborted
from .frames import (
    DIALLER_READY,
    DIALLER_WELCOME,
    LISTENER_AUTH,
    LISTENER_HELLO,
    MAC_SIZE,
    MAX_PATH_COUNTERS,
    NONCE_SIZE,
    TOKEN_SIZE,
    Abort,
    AbortCode,
    Auth,
    Buffer,
    Expect,
    Hello,
    HelloKind,
    Ready,
    Welcome,
    check_params,
    decode,
    encode,
)

_ZERO_MAC = bytes(MAC_SIZE)
_ZERO_TOKEN = bytes(TOKEN_SIZE)
_CLIENT, _SERVER = b"sctpbond v2 client", b"sctpbond v2 server"


def mac(key: bytes, role: bytes, transcript: bytes) -> bytes:
    """HMAC-SHA256 of the transcript so far; the role string keeps one side's proof from passing for the other's."""
    return hmac.new(key, role + transcript, hashlib.sha256).digest()


def _proof(key: bytes | None, role: bytes, transcript: bytes) -> bytes:
    """What AUTH or READY carries: the MAC with a key, 32 zero bytes without one."""
    return mac(key, role, transcript) if key is not None else _ZERO_MAC


def _verify(key: bytes | None, role: bytes, transcript: bytes, got: bytes, why: str) -> None:
    """The peer's proof must be what we compute over the same transcript (constant time); else ABORT(AUTH)."""
    if not hmac.compare_digest(_proof(key, role, transcript), got):
        raise _refuse(AuthError(f"authentication failed: {why}"), AbortCode.AUTH, "wrong key")


def path_keys(key: bytes, cnonce: bytes, snonce: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """Per-connection AES-256 keys (client->server, server->client), from HKDF-SHA256 over the pre-shared key, both
    fresh nonces and the transcript's hash: every path connection, and every re-join, gets fresh keys."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = b"sctpbond v2 path keys" + hashlib.sha256(transcript).digest()
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
    keys: tuple[bytes, bytes] | None = None  # (send, receive) AEAD keys with a key, else None
    encrypt: bool = False  # keys seal the frames (True) or only authenticate them (--no-encrypt)
    backup: bool = False  # the dialler made this path a backup (--backup)
    redundant: bool = False  # NEW: the dialler asked for redundant copies (--redundant), both directions


def _raise_abort(frame: Abort, who: str) -> None:
    exc: AuthError | SessionAborted
    if frame.code == AbortCode.AUTH:
        why = (f"{who} does not have the same key (or the handshake was altered on the way)"
               if frame.reason == "wrong key" else f"{who} refused us: {frame.reason}")
        exc = AuthError(f"authentication failed: {why}")
    else:
        exc = SessionAborted(f"{who} aborted: {frame.reason or frame.code.name.lower()}")
    exc.from_peer = True
    raise exc


def _refuse(exc: ProtocolError, code: AbortCode, reason: str | None = None) -> ProtocolError:
    exc.abort_code, exc.peer_reason = code, reason or str(exc)
    return exc


class ClientHandshake:
    """Dialling side: hello() -> bytes; receive_welcome(frame) -> AUTH bytes; receive_ready(frame) -> Negotiated."""

    def __init__(self, *, key: bytes | None, kind: HelloKind, token: bytes, path_id: int, nonce: bytes,
                 window: int, max_chunk: int, encrypt: bool = True, backup: bool = False,
                 redundant: bool = False) -> None:
        if len(nonce) != NONCE_SIZE or len(token) != TOKEN_SIZE:
            raise ValueError("bad nonce or token size")
        self.key, self.kind, self.token, self.path_id = key, kind, token, path_id
        self.encrypt = encrypt and key is not None
        self.nonce, self.window, self.max_chunk = nonce, window, max_chunk
        self.backup, self.redundant = backup, redundant and kind == HelloKind.NEW
        self.result: Negotiated | None = None
        self._welcome: Welcome | None = None
        self._transcript = b""

    @property
    def expect(self) -> Expect:
        return DIALLER_WELCOME if self._welcome is None else DIALLER_READY

    def hello(self) -> bytes:
        frame = Hello(self.kind, self.path_id, self.token, self.nonce, self.window, self.max_chunk,
                      self.key is not None, encrypt=self.encrypt, backup=self.backup, redundant=self.redundant)
        self._transcript = encode(frame)
        return self._transcript

    def receive_welcome(self, raw: Buffer) -> bytes:
        """WELCOME (or ABORT) as received; returns the AUTH frame to send."""
        frame = decode(raw, DIALLER_WELCOME)
        if isinstance(frame, Abort):
            _raise_abort(frame, "the listener")
        assert isinstance(frame, Welcome)
        if self.kind == HelloKind.JOIN and frame.token != self.token:  # (RemoteProtocolError: ABORT(PROTOCOL))
            raise RemoteProtocolError("the listener answered a join with another session's token")
        check_params(frame.window, frame.max_chunk, "the listener")
        self._welcome = frame
        self._transcript += bytes(raw)
        auth = encode(Auth(_proof(self.key, _CLIENT, self._transcript)))
        self._transcript += auth
        return auth

    def receive_ready(self, raw: Buffer) -> Negotiated:
        """READY (or ABORT) as received: checks the listener's proof and finishes."""
        frame = decode(raw, DIALLER_READY)
        if isinstance(frame, Abort):
            _raise_abort(frame, "the listener")
        assert isinstance(frame, Ready) and self._welcome is not None
        _verify(self.key, _SERVER, self._transcript, frame.mac,
                "the listener does not have the same key, or the handshake was altered on the way"
                if self.key is not None else "a keyless listener sent a MAC")
        w, keys = self._welcome, None
        if self.key is not None:
            keys = path_keys(self.key, self.nonce, w.nonce, self._transcript)  # (c2s, s2c): send, receive
        self.result = Negotiated(w.token, self.path_id, self.kind, w.window, w.max_chunk, w.addresses, keys,
                                 self.encrypt, self.backup, self.redundant)
        return self.result


class ServerHandshake:
    """Listening side: receive_hello(frame) -> Hello; welcome() -> bytes; receive_auth(frame); ready() -> bytes.

    `new_token()` supplies a token for a NEW session; `knows(token)` says whether a JOIN names a live session.
    Between the steps the runtime decides admission (slots, limits); every refusal raises a ProtocolError that
    carries the ABORT to send (`abort_code`, `peer_reason`).
    """

    def __init__(self, *, key: bytes | None, nonce: bytes, window: int, max_chunk: int,
                 new_token: Callable[[], bytes], knows: Callable[[bytes], bool],
                 addresses: tuple[str, ...] = (), require_encrypt: bool = True,
                 max_paths: int = MAX_PATH_COUNTERS) -> None:
        self.key, self.nonce, self.window, self.max_chunk = key, nonce, window, max_chunk
        self.require_encrypt = require_encrypt and key is not None
        self._new_token, self._knows, self.addresses = new_token, knows, addresses
        self.max_paths = max_paths
        self.hello: Hello | None = None
        self.token = _ZERO_TOKEN
        self.result: Negotiated | None = None
        self._transcript = b""

    @property
    def expect(self) -> Expect:
        return LISTENER_HELLO if self.hello is None else LISTENER_AUTH

    def receive_hello(self, raw: Buffer) -> Hello:
        frame = decode(raw, LISTENER_HELLO)  # a RemoteProtocolError carries ABORT(PROTOCOL) itself
        assert isinstance(frame, Hello)
        if frame.keyed != (self.key is not None):
            why = ("the listener requires a key (--key-file / SCTPBOND_KEY)" if self.key is not None
                   else "the listener has no key; give it the same --key-file")
            raise _refuse(AuthError(f"authentication failed: {why}"), AbortCode.AUTH, why)
        if self.require_encrypt and not frame.encrypt:
            why = "the listener requires encryption; drop --no-encrypt or start the listener with it"
            raise _refuse(AuthError(f"refused: {why}"), AbortCode.AUTH, why)
        if frame.path_id >= self.max_paths:
            raise _refuse(RemoteProtocolError(f"path id {frame.path_id} over the limit"), AbortCode.TOO_MANY_PATHS)
        check_params(frame.window, frame.max_chunk, "the dialler")
        if frame.kind == HelloKind.NEW:
            self.token = self._new_token()
        elif self._knows(frame.token):
            self.token = frame.token
        else:
            raise _refuse(AuthError("a path tried to join an unknown session"), AbortCode.UNKNOWN_SESSION,
                          "unknown session token")
        self.hello = frame
        self._transcript = bytes(raw)
        return frame

    def welcome(self) -> bytes:
        assert self.hello is not None
        frame = encode(Welcome(self.token, self.nonce, self.window, self.max_chunk, self.addresses))
        self._transcript += frame
        return frame

    def receive_auth(self, raw: Buffer) -> Negotiated:
        """AUTH (or ABORT) as received: checks the dialler's proof; the result is final once ready() is sent."""
        frame = decode(raw, LISTENER_AUTH)
        if isinstance(frame, Abort):
            _raise_abort(frame, "the dialler")
        assert isinstance(frame, Auth) and self.hello is not None
        _verify(self.key, _CLIENT, self._transcript, frame.mac,
                "a peer presented a wrong key" if self.key is not None else "a keyless dialler sent a MAC")
        self._transcript += bytes(raw)
        h, keys = self.hello, None
        if self.key is not None:
            c2s, s2c = path_keys(self.key, h.nonce, self.nonce, self._transcript)
            keys = (s2c, c2s)  # send, receive
        self.result = Negotiated(self.token, h.path_id, h.kind, h.window, h.max_chunk, keys=keys, encrypt=h.encrypt,
                                 backup=h.backup, redundant=h.redundant)
        return self.result

    def ready(self) -> bytes:
        if self.result is None:  # an explicit check, not an assert: mac_s before mac_c was verified is an oracle
            raise LocalProtocolError("READY before the dialler's AUTH was verified")
        return encode(Ready(_proof(self.key, _SERVER, self._transcript)))
