"""One exception hierarchy for the whole tool.

str() of every error is a one-line message meant for the user; the CLI prints it and maps the class to an exit
code (`exit_code`), so no traceback ever reaches a terminal for an expected failure. An error caused by the peer
also carries what to tell it (`abort_code`, `peer_reason`: the ABORT frame's code and reason, wire-format.md),
as aioquic's QuicConnectionError carries its error code.
"""

from __future__ import annotations


class SctpbondError(Exception):
    """Base of all sctpbond errors; str() is a one-line message for the user."""

    exit_code = 1
    abort_code = 9  # INTERNAL: what the peer is told when this error ends a session or a handshake
    from_peer = False  # True: the peer's own ABORT (nothing to tell it back)

    def __init__(self, message: str = "", *, abort_code: int | None = None, peer_reason: str | None = None) -> None:
        super().__init__(message)
        if abort_code is not None:
            self.abort_code = abort_code
        self.peer_reason = peer_reason if peer_reason is not None else message


class UsageError(SctpbondError):
    """The command line or configuration is wrong (bad --path, unreadable key file, ...)."""

    exit_code = 2


class SctpUnavailableError(UsageError):
    """Kernel SCTP (or pysctp) was asked for but this host does not have it."""


class TransportError(SctpbondError):
    """A socket could not be opened, connected or used."""


class ConnectError(TransportError):
    """No path to the peer could be established (unreachable, refused, timed out)."""


class AddressInUseError(TransportError):
    """The listening port is already taken."""


class ProtocolError(SctpbondError):
    """Base for violations of the sctpbond wire protocol."""

    abort_code = 1  # PROTOCOL


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not valid sctpbond (garbage, oversize frame, out-of-window data)."""


class IntegrityError(RemoteProtocolError):
    """Received bytes are not what the peer sent: a sealed frame failed authentication or was replayed, or the
    end-to-end digest of a stream does not match."""

    abort_code = 8  # INTEGRITY


class LocalProtocolError(ProtocolError):
    """This side misused the protocol core (a bug in the caller, not the peer's fault)."""


class AuthError(ProtocolError):
    """Authentication failed: the peers do not share the same key, or a join presented a wrong token."""

    abort_code = 2  # AUTH


class SessionAborted(SctpbondError):
    """The peer aborted the session (ABORT frame) or the session cannot go on."""

    abort_code = 6  # CANCELLED


class BusyError(SessionAborted):
    """The listener cannot take another session now (one-session listener in use, or --max-sessions reached)."""

    abort_code = 4  # BUSY


class TransferFailed(SctpbondError):
    """The transfer did not complete: not every byte was delivered and acknowledged."""
