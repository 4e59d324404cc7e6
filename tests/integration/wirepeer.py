"""A hostile peer that speaks sctpbond's wire format, version 2, written from docs/wire-format.md alone.

Nothing here comes from the `sctpbond` package, on purpose: the attack tests check the listener against a client
written from the document, not against the project's own codec (a bug shared by both would pass unseen). Only the
standard library and `cryptography` (HKDF, AES-GCM) are used.

- frame builders (`hello`, `auth`, `data`, `ack`, `fin`, `ping`, `pong`, `abort`, ...) return the bytes of one
  whole frame, header included; every field can be set to any value, invalid ones too (that is the point);
- `read_frame` reads exactly one frame (8-byte header, then its body) and never a byte beyond it;
- `Peer` dials (or takes a socket made elsewhere, e.g. inside a network namespace), runs the v2 handshake as the
  dialler step by step or at once, derives the path keys and then sends and reads session frames in the clear
  (no key), SEALED (key) or AUTHED (key, --no-encrypt);
- `Channel` seals or opens one direction's frames given its key, for a peer or a man in the middle that has it;
- `Forwarder` is an on-path attacker: a TCP relay that splits both directions into frames and lets a hook replace
  each frame's bytes before they go on.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MiB = 1 << 20
VERSION = 2
MAGIC = b"SCTB"

# frame types
HELLO, WELCOME, AUTH, READY = 1, 2, 3, 4
DATA, ACK, FIN, PING, PONG, ABORT = 16, 17, 18, 19, 20, 21
SEALED, AUTHED = 32, 33
SESSION_TYPES = frozenset({DATA, ACK, FIN, PING, PONG, ABORT})

# HELLO kind and flags
NEW, JOIN = 0, 1
FLAG_KEYED, FLAG_ENCRYPT = 1, 2

# ABORT codes
PROTOCOL, AUTH_FAILED, UNKNOWN_SESSION, BUSY, TOO_MANY_PATHS = 1, 2, 3, 4, 5
CANCELLED, TIMEOUT, INTEGRITY, INTERNAL = 6, 7, 8, 9

# limits of the format
HEADER_LEN = 8
HELLO_LEN = 56
WELCOME_MIN = 45
ADDRESS_LEN = 17
MAC_LEN = 32
TAG_LEN = 16
FIN_LEN = 24
MAX_PAYLOAD = MiB
MIN_CHUNK, MAX_CHUNK = 65536, MiB
MAX_WRAPPED = 8 + (16 + MAX_PAYLOAD + 8) + 16  # largest SEALED / AUTHED body
DEFAULT_WINDOW = 64 * MiB
DEFAULT_CHUNK = 256 * 1024

CLIENT_LABEL = b"sctpbond v2 client"
SERVER_LABEL = b"sctpbond v2 server"
KEYS_LABEL = b"sctpbond v2 path keys"

_HEADER = struct.Struct(">BBHI")  # type, flags, reserved, length
# magic, version, kind, flags, path id, reserved, token, nonce, window, max chunk
_HELLO = struct.Struct(">4sBBHHH16s16sQI")
_U64 = struct.Struct(">Q")


class WireError(Exception):
    """The other side sent something this peer cannot take (or did not send what it must)."""


class Aborted(WireError):
    """The other side answered with ABORT."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"ABORT code {code}: {reason}")
        self.code, self.reason = code, reason


class Closed(WireError):
    """The other side closed the connection (EOF or reset) before a whole frame."""


# -- frame builders ------------------------------------------------------------------------------------------------

def header(type: int, body_len: int, flags: int = 0, reserved: int = 0) -> bytes:
    return _HEADER.pack(type, flags, reserved, body_len)


def frame(type: int, body: bytes) -> bytes:
    return header(type, len(body)) + body


def parse_header(raw: bytes) -> tuple[int, int, int, int]:
    """(type, flags, reserved, length) of an 8-byte header."""
    t, f, r, n = _HEADER.unpack(raw[:HEADER_LEN])
    return t, f, r, n


def hello(kind: int = NEW, path_id: int = 0, token: bytes = bytes(16), nonce: bytes | None = None,
          window: int = DEFAULT_WINDOW, max_chunk: int = DEFAULT_CHUNK, flags: int = 0, *, magic: bytes = MAGIC,
          version: int = VERSION, reserved: int = 0) -> bytes:
    body = _HELLO.pack(magic, version, kind, flags, path_id, reserved, token, nonce if nonce is not None
                       else os.urandom(16), window, max_chunk)
    return frame(HELLO, body)


@dataclass
class Hello:
    magic: bytes
    version: int
    kind: int
    flags: int
    path_id: int
    reserved: int
    token: bytes
    nonce: bytes
    window: int
    max_chunk: int

    def encode(self) -> bytes:
        return hello(self.kind, self.path_id, self.token, self.nonce, self.window, self.max_chunk, self.flags,
                     magic=self.magic, version=self.version, reserved=self.reserved)


def parse_hello(raw: bytes) -> Hello:
    """A HELLO frame (header included) or body."""
    body = raw[HEADER_LEN:] if len(raw) == HEADER_LEN + HELLO_LEN else raw
    if len(body) != HELLO_LEN:
        raise WireError(f"HELLO body of {len(body)} bytes")
    return Hello(*_HELLO.unpack(body))


def rewrite_hello(raw: bytes, **fields: int | bytes) -> bytes:
    """The HELLO frame `raw` with some fields replaced (e.g. max_chunk=1): what an on-path attacker sends on."""
    h = parse_hello(raw)
    for name, value in fields.items():
        if not hasattr(h, name):
            raise TypeError(f"HELLO has no field {name!r}")
        setattr(h, name, value)
    return h.encode()


@dataclass
class Welcome:
    token: bytes
    nonce: bytes
    window: int
    max_chunk: int
    addresses: list[tuple[int, bytes]]  # (family 4 or 6, 16 bytes)
    frame: bytes  # the whole frame as it came over the wire (part of the transcript)

    @property
    def body(self) -> bytes:
        return self.frame[HEADER_LEN:]

    def ipv4(self) -> list[str]:
        return [socket.inet_ntoa(a[:4]) for fam, a in self.addresses if fam == 4]


def welcome(token: bytes, nonce: bytes, window: int, max_chunk: int, addresses: list[tuple[int, bytes]]) -> bytes:
    body = token + nonce + _U64.pack(window) + struct.pack(">IB", max_chunk, len(addresses))
    body += b"".join(bytes([fam]) + addr.ljust(16, b"\0") for fam, addr in addresses)
    return frame(WELCOME, body)


def parse_welcome(raw: bytes) -> Welcome:
    """A WELCOME frame, header included."""
    t, _, _, n = parse_header(raw)
    body = raw[HEADER_LEN:]
    if t != WELCOME or len(body) != n or n < WELCOME_MIN:
        raise WireError(f"not a WELCOME frame: type {t}, length {n}, body {len(body)} bytes")
    count = body[44]
    if n != WELCOME_MIN + ADDRESS_LEN * count:
        raise WireError(f"WELCOME of {n} bytes for {count} addresses")
    addrs = [(body[45 + 17 * i], body[46 + 17 * i: 62 + 17 * i]) for i in range(count)]
    (window,) = _U64.unpack(body[32:40])
    (chunk,) = struct.unpack(">I", body[40:44])
    return Welcome(body[:16], body[16:32], window, chunk, addrs, bytes(raw))


def welcome_with(raw: bytes, **fields: int | bytes) -> bytes:
    """The WELCOME frame `raw` with some fields (token, nonce, window, max_chunk, addresses) replaced."""
    w = parse_welcome(raw)
    values: dict[str, object] = {"token": w.token, "nonce": w.nonce, "window": w.window, "max_chunk": w.max_chunk,
                                 "addresses": w.addresses}
    for name, value in fields.items():
        if name not in values:
            raise TypeError(f"WELCOME has no field {name!r}")
        values[name] = value
    return welcome(**values)  # type: ignore[arg-type]


def auth(mac: bytes = bytes(MAC_LEN)) -> bytes:
    return frame(AUTH, mac)


def ready(mac: bytes = bytes(MAC_LEN)) -> bytes:
    return frame(READY, mac)


def data(offset: int, payload: bytes) -> bytes:
    return header(DATA, 8 + len(payload)) + _U64.pack(offset) + payload


def ack(delivered: int, counters: Sequence[tuple[int, int]] = (), fin: bool = False) -> bytes:
    body = _U64.pack(delivered) + bytes([1 if fin else 0, len(counters)])
    body += b"".join(struct.pack(">HQ", path_id, received) for path_id, received in counters)
    return frame(ACK, body)


def fin(total: int, digest16: bytes) -> bytes:
    """FIN: total u64 | XXH3-128 digest; any digest length is accepted here (a valid FIN has exactly 16)."""
    return frame(FIN, _U64.pack(total) + digest16)


def ping(v: int) -> bytes:
    return header(PING, 8) + _U64.pack(v)


def pong(v: int) -> bytes:
    return header(PONG, 8) + _U64.pack(v)


def abort(code: int, reason: str | bytes = b"") -> bytes:
    text = reason.encode() if isinstance(reason, str) else reason
    return frame(ABORT, struct.pack(">H", code) + text)


def parse_abort(body: bytes) -> tuple[int, str]:
    (code,) = struct.unpack(">H", body[:2])
    return code, body[2:].decode("utf-8", "replace")


def parse_data(body: bytes) -> tuple[int, bytes]:
    """(offset, payload) of a DATA body."""
    return _U64.unpack(body[:8])[0], body[8:]


def parse_fin(body: bytes) -> tuple[int, bytes]:
    """(total, digest) of a FIN body."""
    return _U64.unpack(body[:8])[0], body[8:]


def split_frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """The whole frames at the start of `buf` (each with its header), and the bytes left after them."""
    out, pos = [], 0
    while len(buf) - pos >= HEADER_LEN:
        n = _HEADER.unpack_from(buf, pos)[3]
        if len(buf) - pos < HEADER_LEN + n:
            break
        out.append(bytes(buf[pos: pos + HEADER_LEN + n]))
        pos += HEADER_LEN + n
    return out, bytes(buf[pos:])


# -- reading -------------------------------------------------------------------------------------------------------

def _read_exact(sock: socket.socket, n: int, deadline: float) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(buf)} of {n} bytes after the timeout")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, timeout: float = 10.0, max_body: int = MAX_WRAPPED) -> tuple[int, bytes] | None:
    """(type, body) of the next frame: exactly the 8-byte header, then exactly its body, never a byte more.

    None when the other side closed (EOF or reset) before a whole frame; TimeoutError when `timeout` s pass first;
    WireError for a header whose length no frame of the format can have (this peer does not allocate it)."""
    deadline = time.monotonic() + timeout
    raw = _read_exact(sock, HEADER_LEN, deadline)
    if raw is None:
        return None
    t, _, _, n = parse_header(raw)
    if n > max_body:
        raise WireError(f"frame type {t} claims a body of {n} bytes")
    body = _read_exact(sock, n, deadline) if n else b""
    return None if body is None else (t, body)


def read_raw_frame(sock: socket.socket, timeout: float = 10.0) -> bytes | None:
    """The next frame's bytes, header included (None when closed): for transcripts."""
    got = read_frame(sock, timeout)
    return None if got is None else header(got[0], len(got[1])) + got[1]


def wait_closed(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """(closed, what arrived before): whether the other side closed within `timeout` s (EOF or reset)."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return True, bytes(got)
        if not chunk:
            return True, bytes(got)
        got += chunk
    return False, bytes(got)


# -- keys ----------------------------------------------------------------------------------------------------------

def mac_client(key: bytes, transcript: bytes) -> bytes:
    """mac_c = HMAC-SHA256(K, "sctpbond v2 client" || T), T = HELLO frame || WELCOME frame."""
    return hmac.new(key, CLIENT_LABEL + transcript, hashlib.sha256).digest()


def mac_server(key: bytes, transcript: bytes, auth_frame: bytes) -> bytes:
    """mac_s = HMAC-SHA256(K, "sctpbond v2 server" || T || AUTH frame)."""
    return hmac.new(key, SERVER_LABEL + transcript + auth_frame, hashlib.sha256).digest()


def path_keys(key: bytes, nonce_c: bytes, nonce_s: bytes, transcript: bytes, auth_frame: bytes) -> tuple[bytes, bytes]:
    """(K_c2s, K_s2c) = HKDF-SHA256(K, salt nonce_c || nonce_s, info label || SHA-256(T || AUTH frame), 64)."""
    info = KEYS_LABEL + hashlib.sha256(transcript + auth_frame).digest()
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=nonce_c + nonce_s, info=info).derive(key)
    return okm[:32], okm[32:]


def _nonce(seq: int) -> bytes:
    return bytes(4) + _U64.pack(seq)


def split_wrapped(raw: bytes) -> tuple[int, int, bytes, bytes]:
    """(type, seq, inner, tag) of a whole AUTHED frame; for SEALED `inner` is the ciphertext."""
    t = raw[0]
    body = raw[HEADER_LEN:]
    return t, _U64.unpack(body[:8])[0], body[8:-TAG_LEN], body[-TAG_LEN:]


def join_wrapped(t: int, seq: int, inner: bytes, tag: bytes) -> bytes:
    """An AUTHED (or SEALED) frame from its parts; the tag is kept as given, valid or not."""
    return frame(t, _U64.pack(seq) + inner + tag)


class Channel:
    """One direction of one connection: wraps inner frames (SEALED or AUTHED, seq from 0) or opens them.

    `kind` 0 is a keyless session: frames go as they are."""

    def __init__(self, key: bytes | None, kind: int) -> None:
        if kind not in (0, SEALED, AUTHED):
            raise ValueError(f"channel kind {kind}")
        if kind and (key is None or len(key) != 32):
            raise ValueError("a keyed channel needs its 32-byte direction key")
        self.kind = kind
        self.aead = AESGCM(key) if kind and key is not None else None
        self.seq = 0

    def wrap(self, inner: bytes, seq: int | None = None) -> bytes:
        if self.aead is None:
            return inner
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        seqb = _U64.pack(seq)
        hdr = header(self.kind, 8 + len(inner) + TAG_LEN)
        if self.kind == SEALED:
            return hdr + seqb + self.aead.encrypt(_nonce(seq), inner, hdr + seqb)
        tag = self.aead.encrypt(_nonce(seq), b"", hdr + seqb + inner)
        return hdr + seqb + inner + tag

    def unwrap(self, t: int, body: bytes) -> tuple[int, bytes]:
        """(seq, inner frame) of a received SEALED / AUTHED frame; WireError if its tag does not verify."""
        if self.aead is None:
            return -1, header(t, len(body)) + body
        if t != self.kind:
            raise WireError(f"expected frame type {self.kind}, got {t}")
        if len(body) < 8 + HEADER_LEN + TAG_LEN:
            raise WireError(f"wrapped frame of {len(body)} bytes")
        hdr = header(t, len(body))
        seqb = body[:8]
        (seq,) = _U64.unpack(seqb)
        try:
            if t == SEALED:
                inner = self.aead.decrypt(_nonce(seq), body[8:], hdr + seqb)
            else:
                inner = body[8:-TAG_LEN]
                self.aead.decrypt(_nonce(seq), body[-TAG_LEN:], hdr + seqb + inner)
        except InvalidTag:
            raise WireError(f"frame seq {seq}: the tag does not verify") from None
        return seq, inner


# -- the dialler ---------------------------------------------------------------------------------------------------

class Peer:
    """A dialler written from the spec. With `connect=True` it dials `address` (from `source`, if given) at once.

    The handshake runs at once with handshake(), or step by step (send_hello, read_welcome, send_auth,
    read_ready), each step open to any value (an attack). After READY: send() and recv() speak session frames,
    wrapped the way the session's mode says (keyless: as they are; key: SEALED; key, encrypt=False: AUTHED)."""

    def __init__(self, address: tuple[str, int] | None = None, *, sock: socket.socket | None = None,
                 source: str | None = None, key: bytes | None = None, encrypt: bool = True,
                 timeout: float = 10.0) -> None:
        self.sock = sock if sock is not None else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.key, self.encrypt, self.timeout = key, encrypt, timeout
        self.hello_frame = b""
        self.welcome: Welcome | None = None
        self.auth_frame = b""
        self.keys: tuple[bytes, bytes] | None = None
        self.tx = Channel(None, 0)
        self.rx = Channel(None, 0)
        if source is not None:
            self.sock.bind((source, 0))
        if address is not None:
            self.sock.settimeout(timeout)
            self.sock.connect(address)

    # the handshake, step by step

    @property
    def default_flags(self) -> int:
        return (FLAG_KEYED | (FLAG_ENCRYPT if self.encrypt else 0)) if self.key is not None else 0

    def send_hello(self, **fields: int | bytes) -> bytes:
        """Send HELLO(NEW) with the defaults (flags from key/encrypt), any field replaced by `fields`."""
        kw: dict[str, int | bytes] = {"flags": self.default_flags, **fields}
        return self.send_hello_frame(hello(**kw))  # type: ignore[arg-type]

    def send_hello_frame(self, raw: bytes) -> bytes:
        """Send exactly these bytes as the HELLO (they are the transcript's first part)."""
        self.hello_frame = raw
        self.sock.sendall(raw)
        return raw

    def _expect(self, wanted: int, timeout: float | None) -> bytes:
        got = read_frame(self.sock, self.timeout if timeout is None else timeout)
        if got is None:
            raise Closed(f"connection closed while waiting for frame type {wanted}")
        t, body = got
        if t == ABORT:
            raise Aborted(*parse_abort(body))
        if t != wanted:
            raise WireError(f"expected frame type {wanted}, got {t} ({len(body)} bytes)")
        return header(t, len(body)) + body

    def read_welcome(self, timeout: float | None = None) -> Welcome:
        self.welcome = parse_welcome(self._expect(WELCOME, timeout))
        return self.welcome

    @property
    def transcript(self) -> bytes:
        """T = HELLO frame || WELCOME frame, exactly as they went over the wire."""
        assert self.welcome is not None, "no WELCOME yet"
        return self.hello_frame + self.welcome.frame

    def mac_c(self) -> bytes:
        return mac_client(self.key, self.transcript) if self.key is not None else bytes(MAC_LEN)

    def send_auth(self, mac: bytes | None = None) -> bytes:
        """AUTH with our mac_c (zeros without a key), or with `mac` (a wrong one, for an attack)."""
        self.auth_frame = auth(self.mac_c() if mac is None else mac)
        self.sock.sendall(self.auth_frame)
        return self.auth_frame

    def read_ready(self, timeout: float | None = None) -> bytes:
        """READY's mac_s, checked; then the session's channels are set up."""
        mac = self._expect(READY, timeout)[HEADER_LEN:]
        if self.key is None:
            if mac != bytes(MAC_LEN):
                raise WireError("keyless READY with a non-zero mac")
            return mac
        if not hmac.compare_digest(mac, mac_server(self.key, self.transcript, self.auth_frame)):
            raise WireError("READY's mac_s does not verify: not our listener")
        assert self.welcome is not None
        self.keys = path_keys(self.key, parse_hello(self.hello_frame).nonce, self.welcome.nonce, self.transcript,
                              self.auth_frame)
        kind = SEALED if self.encrypt else AUTHED
        self.tx, self.rx = Channel(self.keys[0], kind), Channel(self.keys[1], kind)
        return mac

    def handshake(self, **hello_fields: int | bytes) -> Welcome:
        """HELLO, WELCOME, AUTH, READY: a session path, ready for session frames."""
        self.send_hello(**hello_fields)
        w = self.read_welcome()
        self.send_auth()
        self.read_ready()
        return w

    # the session

    def wrap(self, *inner: bytes) -> bytes:
        """The bytes that carry these session frames on this connection (for batching into one sendall)."""
        return b"".join(self.tx.wrap(f) for f in inner)

    def send(self, *inner: bytes) -> None:
        self.sock.sendall(self.wrap(*inner))

    def recv(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """(type, body) of the next session frame, opened if wrapped; None when the listener closed."""
        got = read_frame(self.sock, self.timeout if timeout is None else timeout)
        if got is None:
            return None
        t, body = got
        if self.rx.kind:
            _, inner = self.rx.unwrap(t, body)
            return inner[0], inner[HEADER_LEN:]
        return t, body

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the on-path attacker ------------------------------------------------------------------------------------------

C2S, S2C = "c2s", "s2c"


@dataclass
class Relay:
    """One relayed connection: `index` counts the connections the forwarder accepted, from 0; `frames` the frames
    seen each way so far, the one being handed to the hook included (1 for HELLO and for WELCOME)."""

    index: int
    client: socket.socket
    upstream: socket.socket
    frames: dict[str, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    state: dict[str, object] = field(default_factory=dict)  # for hooks

    def close(self) -> None:
        for s in (self.client, self.upstream):
            try:
                s.close()
            except OSError:
                pass


# hook(relay, direction, frame bytes) -> the bytes to send on instead (b"" drops the frame)
Hook = Callable[[Relay, str, bytes], bytes]


class Forwarder:
    """A TCP relay: accepts on `listen` (an address, or a bound socket), dials `target` for each connection (from
    sockets `make_socket` returns, bound to `source` if given) and passes bytes both ways, frame by frame through
    `hook`. A header no frame of the format can have ends the parsing for that direction: what follows passes
    unchanged. Half-closes are passed on."""

    def __init__(self, listen: tuple[str, int] | socket.socket, target: tuple[str, int], *, hook: Hook | None = None,
                 make_socket: Callable[[], socket.socket] | None = None, source: str | None = None) -> None:
        if isinstance(listen, socket.socket):
            self.lsock = listen  # bound by the caller (e.g. inside a network namespace)
            self.lsock.listen(64)
        else:
            self.lsock = socket.create_server(listen)
        self.target, self.hook, self.source = target, hook, source
        self.make_socket = make_socket or (lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        self.relays: list[Relay] = []
        self.errors: list[BaseException] = []  # exceptions raised by the hook (the test re-raises them)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="forwarder", daemon=True)]
        self._threads[0].start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.lsock.getsockname()[:2]
        return host, port

    def _accept(self) -> None:
        self.lsock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = self.make_socket()
            try:
                if self.source is not None:
                    upstream.bind((self.source, 0))
                upstream.settimeout(10)
                upstream.connect(self.target)
            except OSError:
                client.close()
                upstream.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                relay = Relay(len(self.relays), client, upstream)
                self.relays.append(relay)
            for src, dst, direction in ((client, upstream, C2S), (upstream, client, S2C)):
                t = threading.Thread(target=self._pump, args=(relay, src, dst, direction), daemon=True,
                                     name=f"forwarder-{relay.index}-{direction}")
                t.start()
                self._threads.append(t)

    def _pump(self, relay: Relay, src: socket.socket, dst: socket.socket, direction: str) -> None:
        buf = b""
        parsing = True
        try:
            while chunk := src.recv(1 << 18):
                if not parsing:
                    dst.sendall(chunk)
                    continue
                buf += chunk
                frames, buf = split_frames(buf)
                out = []
                for f in frames:
                    relay.frames[direction] += 1
                    out.append(self._apply(relay, direction, f))
                if len(buf) >= HEADER_LEN and parse_header(buf)[3] > MAX_WRAPPED:
                    parsing = False  # not frames of ours: pass the rest as it comes
                    out.append(buf)
                    buf = b""
                if out:
                    dst.sendall(b"".join(out))
            if buf:
                dst.sendall(buf)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            relay.close()  # a reset on one side resets the other

    def _apply(self, relay: Relay, direction: str, f: bytes) -> bytes:
        if self.hook is None:
            return f
        try:
            return self.hook(relay, direction, f)
        except Exception as exc:  # noqa: BLE001 - kept for the test, the frame goes on unchanged
            self.errors.append(exc)
            return f

    def close(self) -> None:
        self._stop.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self._lock:
            for relay in self.relays:
                relay.close()
        for t in self._threads:
            t.join(timeout=2)

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

