"""Wire codec for sctpbond v2 frames (see docs/wire-format.md).

Every frame is an 8-byte header followed by a body:

    type u8 | flags u8 | reserved u16 (0) | body length u32        (network byte order)

The type and length are checked against the frames the receiver expects in its phase (`expect`) and a per-type
maximum *before* anything is allocated, so a peer cannot make us reserve memory with a forged length. Over TCP
frames are concatenated; over SCTP each frame is one message.
Pure functions and frozen dataclasses only: no sockets here.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import LocalProtocolError, RemoteProtocolError

MAGIC = b"SCTB"
VERSION = 2

Buffer = bytes | bytearray | memoryview

HEADER = struct.Struct("!BBHI")
HEADER_SIZE = HEADER.size  # 8

#: Largest DATA payload a peer may send; the sender's chunk size is at most this.
MAX_PAYLOAD = 1 << 20
TOKEN_SIZE = 16
NONCE_SIZE = 16
MAC_SIZE = 32
DIGEST_SIZE = 16  # XXH3-128 of a whole direction's stream, in FIN
MAX_REASON = 256
MAX_ADDRS = 16
MAX_PATH_COUNTERS = 64
#: Out-of-order ranges a receiver holds at most; a sender keeps at most this many chunks beyond `delivered`.
MAX_HELD_RANGES = 4096
#: Limits on the peer's HELLO/WELCOME parameters: the same as on our own options.
MIN_CHUNK, MAX_CHUNK = 64 * 1024, MAX_PAYLOAD
# Bytes a DATA frame adds to its payload on the wire at most: its 16-byte prefix, and a seal's header, sequence
# number and tag around it (SEALED/AUTHED)
DATA_OVERHEAD = 16 + HEADER_SIZE + 8 + 16
MIN_WINDOW_CHUNKS, MAX_WINDOW = 4, 1 << 32


class FrameType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    AUTH = 3
    READY = 4
    DATA = 16
    ACK = 17
    FIN = 18
    PING = 19
    PONG = 20
    ABORT = 21
    SEALED = 32  # an AEAD-sealed frame (keyed, encrypted sessions; see proto/crypto.py)
    AUTHED = 33  # a frame in clear with an AEAD tag over it (keyed sessions with --no-encrypt)


class HelloKind(enum.IntEnum):
    NEW = 0  # first path: create a session
    JOIN = 1  # further path: attach to the session named by the token


class AbortCode(enum.IntEnum):
    PROTOCOL = 1  # peer sent something invalid
    AUTH = 2  # wrong key / missing key
    UNKNOWN_SESSION = 3  # join with a token nobody knows
    BUSY = 4  # listener already serves a session
    TOO_MANY_PATHS = 5
    CANCELLED = 6  # local user/application gave up (e.g. output unwritable)
    TIMEOUT = 7
    INTEGRITY = 8  # end-to-end digest mismatch
    INTERNAL = 9


HELLO_FLAG_KEYED = 0x0001
HELLO_FLAG_ENCRYPT = 0x0002  # keyed client asks for sealed frames after the handshake
HELLO_FLAG_BACKUP = 0x0004  # this path carries data only while no regular path can (RFC 8684 3.3.8's B flag)
HELLO_FLAG_REDUNDANT = 0x0008  # NEW only: every chunk goes out on two paths, in both directions
_HELLO_FLAGS = HELLO_FLAG_KEYED | HELLO_FLAG_ENCRYPT | HELLO_FLAG_BACKUP | HELLO_FLAG_REDUNDANT

_HELLO = struct.Struct("!4sBBHHH16s16sQI")
_WELCOME = struct.Struct("!16s16sQIB")
_ADDR = struct.Struct("!B16s")
_U64 = struct.Struct("!Q")
_ACK_HEAD = struct.Struct("!QBB")  # delivered, flags, counter count
ACK_FLAG_FIN = 0x01
_PATH_COUNTER = struct.Struct("!HQ")
_FIN = struct.Struct("!Q16s")
_ABORT_HEAD = struct.Struct("!H")
DATA_PREFIX = struct.Struct("!BBHIQ")  # header + offset: the whole fixed part of a DATA frame
DATA_PREFIX_SIZE = DATA_PREFIX.size  # 16


@dataclass(frozen=True, slots=True)
class Hello:
    kind: HelloKind
    path_id: int
    token: bytes
    nonce: bytes
    window: int  # bytes the sender of HELLO can hold in its reorder buffer
    max_chunk: int
    keyed: bool = False
    version: int = VERSION
    encrypt: bool = False
    backup: bool = False
    redundant: bool = False

    @property
    def flags(self) -> int:
        return ((HELLO_FLAG_KEYED if self.keyed else 0) | (HELLO_FLAG_ENCRYPT if self.encrypt else 0)
                | (HELLO_FLAG_BACKUP if self.backup else 0) | (HELLO_FLAG_REDUNDANT if self.redundant else 0))


@dataclass(frozen=True, slots=True)
class Welcome:
    token: bytes
    nonce: bytes
    window: int
    max_chunk: int
    addresses: tuple[str, ...] = ()  # listener's addresses, advertised for automatic paths


@dataclass(frozen=True, slots=True)
class Auth:
    mac: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    mac: bytes = bytes(MAC_SIZE)  # the listener's proof of the key over the transcript; zeros without a key


@dataclass(frozen=True, slots=True)
class Data:
    offset: int  # byte offset of payload[0] in the direction's stream
    payload: bytes | bytearray | memoryview = field(repr=False)

    def __repr__(self) -> str:
        return f"Data(offset={self.offset}, len={len(self.payload)})"


@dataclass(frozen=True, slots=True)
class Ack:
    delivered: int  # cumulative: bytes of the stream the receiver has handed to its application
    received: tuple[tuple[int, int], ...] = ()  # (path_id, payload bytes received on that path so far)
    fin: bool = False  # the FIN of this direction has arrived


@dataclass(frozen=True, slots=True)
class Fin:
    total: int  # final length of this direction's stream
    digest: bytes  # XXH3-128 of the whole stream (DIGEST_SIZE bytes)


@dataclass(frozen=True, slots=True)
class Ping:
    opaque: int


@dataclass(frozen=True, slots=True)
class Pong:
    opaque: int


@dataclass(frozen=True, slots=True)
class Abort:
    code: AbortCode
    reason: str = ""

    def __post_init__(self) -> None:
        # A peer's reason lands in our log and error lines: no control or format characters (a newline would
        # forge a log line, an escape sequence would drive the terminal).
        if not self.reason.isprintable():
            object.__setattr__(self, "reason", "".join(c if c.isprintable() else "\ufffd" for c in self.reason))


Frame = Hello | Welcome | Auth | Ready | Data | Ack | Fin | Ping | Pong | Abort

# Per-type body length limits (min, max). Checked from the header alone, before the body is read.
_ACK_MAX = _ACK_HEAD.size + MAX_PATH_COUNTERS * _PATH_COUNTER.size
BODY_LIMITS: dict[FrameType, tuple[int, int]] = {
    FrameType.HELLO: (_HELLO.size, _HELLO.size),
    FrameType.WELCOME: (_WELCOME.size, _WELCOME.size + MAX_ADDRS * _ADDR.size),
    FrameType.AUTH: (MAC_SIZE, MAC_SIZE),
    FrameType.READY: (MAC_SIZE, MAC_SIZE),
    FrameType.DATA: (8 + 1, 8 + MAX_PAYLOAD),
    FrameType.ACK: (_ACK_HEAD.size, _ACK_MAX),
    FrameType.FIN: (_FIN.size, _FIN.size),
    FrameType.PING: (8, 8),
    FrameType.PONG: (8, 8),
    FrameType.ABORT: (_ABORT_HEAD.size, _ABORT_HEAD.size + MAX_REASON),
}
MAX_PLAIN_FRAME = HEADER_SIZE + max(hi for _, hi in BODY_LIMITS.values())
SEAL_SEQ_SIZE, SEAL_TAG_SIZE = 8, 16
# SEALED body: sequence number u64 | the inner frame (header included), encrypted | GCM tag.
# SEALED and AUTHED bodies: sequence number u64 | the inner frame (header included, encrypted or not) | GCM tag.
BODY_LIMITS[FrameType.SEALED] = BODY_LIMITS[FrameType.AUTHED] = (SEAL_SEQ_SIZE + HEADER_SIZE + SEAL_TAG_SIZE,
                                                                 SEAL_SEQ_SIZE + MAX_PLAIN_FRAME + SEAL_TAG_SIZE)
MAX_FRAME = HEADER_SIZE + BODY_LIMITS[FrameType.SEALED][1]  # the largest frame on the wire

# What each side accepts in each phase (docs/wire-format.md): before READY only the next handshake frame, at
# its exact length; after it only session frames, and on a keyed path only its sealed or authenticated form.
Expect = frozenset[FrameType]
LISTENER_HELLO: Expect = frozenset({FrameType.HELLO})
LISTENER_AUTH: Expect = frozenset({FrameType.AUTH, FrameType.ABORT})
DIALLER_WELCOME: Expect = frozenset({FrameType.WELCOME, FrameType.ABORT})
DIALLER_READY: Expect = frozenset({FrameType.READY, FrameType.ABORT})
SESSION: Expect = frozenset({FrameType.DATA, FrameType.ACK, FrameType.FIN, FrameType.PING, FrameType.PONG,
                             FrameType.ABORT})
ANY: Expect = frozenset(FrameType)


def parse_header(header: bytes | bytearray | memoryview, expect: Expect = ANY) -> tuple[FrameType, int]:
    """Validate an 8-byte header against what this phase expects; return (type, body length). Raises
    RemoteProtocolError on anything else, before the body is read."""
    ftype, flags, reserved, length = HEADER.unpack(header)
    try:
        kind = FrameType(ftype)
    except ValueError:
        raise RemoteProtocolError(f"unknown frame type {ftype}") from None
    if kind not in expect:
        wanted = " or ".join(sorted(k.name for k in expect))
        raise RemoteProtocolError(f"{kind.name} frame where {wanted} was expected")
    if flags or reserved:
        raise RemoteProtocolError(f"{kind.name} frame with non-zero flags/reserved bits")
    lo, hi = BODY_LIMITS[kind]
    if not lo <= length <= hi:
        raise RemoteProtocolError(f"{kind.name} frame body of {length} bytes (allowed {lo}..{hi})")
    return kind, length


def _header(kind: FrameType, body_len: int) -> bytes:
    return HEADER.pack(kind, 0, 0, body_len)


def data_prefix(offset: int, payload_len: int) -> bytes:
    """The 16 bytes that precede a DATA payload; sent with sendmsg([prefix, payload]) to avoid a copy."""
    if not 0 < payload_len <= MAX_PAYLOAD:
        raise LocalProtocolError(f"DATA payload of {payload_len} bytes")
    return DATA_PREFIX.pack(FrameType.DATA, 0, 0, 8 + payload_len, offset)


def encode_parts(frame: Frame) -> tuple[bytes | bytearray | memoryview, ...]:
    """A frame as the buffers to hand to sendmsg: DATA as (prefix, payload) so the payload is never copied."""
    if isinstance(frame, Data):
        return data_prefix(frame.offset, len(frame.payload)), frame.payload
    return (encode(frame),)


def check_params(window: int, max_chunk: int, who: str) -> None:
    """A peer's window and chunk size must lie within the limits our own options have (docs/wire-format.md):
    a window of 0 or a 1-byte chunk would wedge or crawl a session."""
    if not MIN_CHUNK <= max_chunk <= MAX_CHUNK:
        raise RemoteProtocolError(f"{who} asks for a max chunk of {max_chunk} bytes (allowed {MIN_CHUNK}..{MAX_CHUNK})")
    if not MIN_WINDOW_CHUNKS * max_chunk <= window <= MAX_WINDOW:
        raise RemoteProtocolError(f"{who} advertises a window of {window} bytes (allowed "
                                  f"{MIN_WINDOW_CHUNKS * max_chunk}..{MAX_WINDOW} for its chunk of {max_chunk})")


def _pack_addr(addr: str) -> bytes:
    import ipaddress  # local: only WELCOME needs it

    ip = ipaddress.ip_address(addr)
    return _ADDR.pack(ip.version, ip.packed.ljust(16, b"\0"))


def _unpack_addr(raw: bytes) -> str:
    import ipaddress

    family, packed = _ADDR.unpack(raw)
    if family == 4:
        return str(ipaddress.IPv4Address(packed[:4]))
    if family == 6:
        return str(ipaddress.IPv6Address(packed))
    raise RemoteProtocolError(f"address family {family} in WELCOME")


def encode(frame: Frame) -> bytes:
    """Encode any frame to bytes (control path; DATA on the hot path uses data_prefix + the payload)."""
    match frame:
        case Data(offset, payload):
            return data_prefix(offset, len(payload)) + bytes(payload)
        case Ack(delivered, received, fin):
            if len(received) > MAX_PATH_COUNTERS:
                raise LocalProtocolError("too many path counters in ACK")
            body = _ACK_HEAD.pack(delivered, ACK_FLAG_FIN if fin else 0, len(received)) + b"".join(
                _PATH_COUNTER.pack(p, n) for p, n in received
            )
            return _header(FrameType.ACK, len(body)) + body
        case Fin(total, digest):
            if len(digest) != DIGEST_SIZE:
                raise LocalProtocolError(f"FIN digest of {len(digest)} bytes (must be {DIGEST_SIZE})")
            return _header(FrameType.FIN, _FIN.size) + _FIN.pack(total, digest)
        case Ping(opaque):
            return _header(FrameType.PING, 8) + _U64.pack(opaque)
        case Pong(opaque):
            return _header(FrameType.PONG, 8) + _U64.pack(opaque)
        case Abort(code, reason):
            text = reason.encode("utf-8", "replace")[:MAX_REASON]
            body = _ABORT_HEAD.pack(code) + text
            return _header(FrameType.ABORT, len(body)) + body
        case Hello():
            body = _HELLO.pack(
                MAGIC, frame.version, frame.kind, frame.flags,
                frame.path_id, 0, frame.token, frame.nonce, frame.window, frame.max_chunk,
            )
            return _header(FrameType.HELLO, len(body)) + body
        case Welcome():
            if len(frame.addresses) > MAX_ADDRS:
                raise LocalProtocolError("too many addresses in WELCOME")
            body = _WELCOME.pack(
                frame.token, frame.nonce, frame.window, frame.max_chunk, len(frame.addresses)
            ) + b"".join(_pack_addr(a) for a in frame.addresses)
            return _header(FrameType.WELCOME, len(body)) + body
        case Auth(mac) | Ready(mac):
            if len(mac) != MAC_SIZE:
                raise LocalProtocolError(f"MAC of {len(mac)} bytes")
            kind = FrameType.AUTH if isinstance(frame, Auth) else FrameType.READY
            return _header(kind, MAC_SIZE) + mac
    raise LocalProtocolError(f"cannot encode {frame!r}")


def split_frame(buf: bytes | bytearray | memoryview, expect: Expect = ANY) -> tuple[FrameType, memoryview]:
    """Check that `buf` is exactly one whole frame of an expected type; return its type and a view of its body."""
    view = memoryview(buf)
    if len(view) < HEADER_SIZE:
        raise RemoteProtocolError(f"truncated frame ({len(view)} bytes)")
    kind, length = parse_header(view[:HEADER_SIZE], expect)
    if len(view) != HEADER_SIZE + length:
        raise RemoteProtocolError(f"{kind.name} frame length {length} does not match {len(view) - HEADER_SIZE}")
    return kind, view[HEADER_SIZE:]


def decode(buf: bytes | bytearray | memoryview, expect: Expect = ANY) -> Frame:
    """Decode one whole frame (header + body) of an expected type. DATA payloads are zero-copy views into `buf`."""
    return decode_body(*split_frame(buf, expect))


def decode_body(kind: FrameType, body: memoryview) -> Frame:
    """Decode a body whose length parse_header already accepted for `kind`."""
    try:
        return _DECODERS[kind](body)
    except (struct.error, ValueError) as exc:
        raise RemoteProtocolError(f"malformed {kind.name} frame: {exc}") from None


def _decode_hello(body: memoryview) -> Hello:
    magic, version, kind, flags, path_id, resv, token, nonce, window, max_chunk = _HELLO.unpack(body)
    if magic != MAGIC:
        raise RemoteProtocolError("not an sctpbond peer (bad magic)")
    if version != VERSION:
        raise RemoteProtocolError(f"peer speaks sctpbond wire version {version}, we speak {VERSION}")
    if resv:
        raise RemoteProtocolError("HELLO with non-zero reserved bits")
    hello_kind = HelloKind(kind)
    if (flags & ~_HELLO_FLAGS or (flags & HELLO_FLAG_ENCRYPT and not flags & HELLO_FLAG_KEYED)
            or (flags & HELLO_FLAG_REDUNDANT and hello_kind != HelloKind.NEW)):
        raise RemoteProtocolError(f"HELLO with invalid flags {flags:#x}")
    return Hello(hello_kind, path_id, token, nonce, window, max_chunk, bool(flags & HELLO_FLAG_KEYED), version,
                 bool(flags & HELLO_FLAG_ENCRYPT), bool(flags & HELLO_FLAG_BACKUP), bool(flags & HELLO_FLAG_REDUNDANT))


def _decode_welcome(body: memoryview) -> Welcome:
    token, nonce, window, max_chunk, count = _WELCOME.unpack(body[: _WELCOME.size])
    rest = body[_WELCOME.size :]
    if len(rest) != count * _ADDR.size:
        raise RemoteProtocolError("WELCOME address list length mismatch")
    addrs = tuple(_unpack_addr(bytes(rest[i : i + _ADDR.size])) for i in range(0, len(rest), _ADDR.size))
    return Welcome(token, nonce, window, max_chunk, addrs)


def _decode_ack(body: memoryview) -> Ack:
    delivered, flags, count = _ACK_HEAD.unpack(body[: _ACK_HEAD.size])
    rest = body[_ACK_HEAD.size :]
    if flags & ~ACK_FLAG_FIN:
        raise RemoteProtocolError(f"ACK with unknown flags {flags:#x}")
    if len(rest) != count * _PATH_COUNTER.size:
        raise RemoteProtocolError("ACK path counter list length mismatch")
    return Ack(delivered, tuple(_PATH_COUNTER.iter_unpack(rest)), bool(flags & ACK_FLAG_FIN))


def _decode_fin(body: memoryview) -> Fin:
    total, digest = _FIN.unpack(body)
    return Fin(total, digest)


def _decode_abort(body: memoryview) -> Abort:
    (code,) = _ABORT_HEAD.unpack(body[: _ABORT_HEAD.size])
    try:
        acode = AbortCode(code)
    except ValueError:
        acode = AbortCode.PROTOCOL
    return Abort(acode, bytes(body[_ABORT_HEAD.size :]).decode("utf-8", "replace"))


def _decode_sealed(body: memoryview) -> Frame:
    # Sealed and authenticated frames are opened by proto.crypto.Opener before decoding; here one means no key
    # was agreed on this path.
    raise RemoteProtocolError("sealed or authenticated frame on a path without a key")


_DECODERS: dict[FrameType, Callable[[memoryview], Frame]] = {
    FrameType.HELLO: _decode_hello,
    FrameType.WELCOME: _decode_welcome,
    FrameType.AUTH: lambda b: Auth(bytes(b)),
    FrameType.READY: lambda b: Ready(bytes(b)),
    FrameType.DATA: lambda b: Data(_U64.unpack(b[:8])[0], b[8:]),
    FrameType.ACK: _decode_ack,
    FrameType.FIN: _decode_fin,
    FrameType.PING: lambda b: Ping(_U64.unpack(b)[0]),
    FrameType.PONG: lambda b: Pong(_U64.unpack(b)[0]),
    FrameType.ABORT: _decode_abort,
    FrameType.SEALED: _decode_sealed,
    FrameType.AUTHED: _decode_sealed,
}


class FrameReader:
    """Incremental decoder for a byte stream of frames, fed in arbitrary pieces: the simulator's stream links,
    captures and the fuzzers. `want()` says how many bytes complete the next header or body; `feed()` accepts any
    amount, buffers it (a copy) and returns the frames it completed. The TCP transport does not use it: it reads
    each header, then the body into a buffer of its exact size (transport/tcp.py), which copies nothing.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._kind: FrameType | None = None
        self._length = 0

    def want(self) -> int:
        need = HEADER_SIZE if self._kind is None else HEADER_SIZE + self._length
        return need - len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        out: list[Frame] = []
        view = memoryview(data)
        while view:
            take = min(self.want(), len(view))
            self._buf += view[:take]
            view = view[take:]
            if self.want():
                continue
            if self._kind is None:
                self._kind, self._length = parse_header(self._buf)
                if self.want():
                    continue
            frame_bytes, self._buf = self._buf, bytearray()
            kind, self._kind = self._kind, None
            out.append(decode_body(kind, memoryview(frame_bytes)[HEADER_SIZE:]))
        return out

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (an EOF here is clean)."""
        return not self._buf and self._kind is None


def iter_frames(data: bytes) -> Iterator[Frame]:
    """Decode a complete byte string of concatenated frames (tests, captures)."""
    reader = FrameReader()
    yield from reader.feed(data)
    if not reader.at_boundary():
        raise RemoteProtocolError("stream ends inside a frame")
