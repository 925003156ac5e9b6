"""The SDK's exceptions: one hierarchy, mapped from the daemon's stable error
codes (docs/daemon.md, "Errors"). Every exception carries the daemon's
``code`` and ``message``; an unknown code becomes a plain :class:`NookError`.
"""

from __future__ import annotations


class NookError(Exception):
    """Base of every error the SDK raises.

    ``code`` is the daemon's error code (``"vm"``, ``"not_found"``, ...) or
    one of the SDK's own (``"daemon_unavailable"``, ``"connection_lost"``);
    ``message`` is the daemon's message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class DaemonUnavailable(NookError):
    """No daemon answers on the socket and none could be started."""


class ConnectionLost(NookError):
    """The daemon closed the connection (it stopped, or crashed)."""


class ProtocolError(NookError):
    """The daemon refused a request as malformed (``bad_request``,
    ``unknown_type``, ``line_too_long``)."""


class VersionMismatch(ProtocolError):
    """The daemon speaks another protocol version."""


class SessionError(NookError):
    """A problem with the sandbox itself."""


class SandboxNotFound(SessionError):
    """No such sandbox (``no_session``)."""


class SandboxExists(SessionError):
    """A sandbox of that name exists (``session_exists``)."""


class SandboxStateError(SessionError):
    """The sandbox is not running, or still running (``session_state``)."""


class ProcessNotFound(NookError):
    """No such running command or background process (``no_exec``,
    ``no_process``)."""


class GuestFileError(NookError):
    """A file or program in the guest could not be used (``not_found``,
    ``not_executable``, ``not_a_directory``, ``is_a_directory``,
    ``permission_denied``, ``not_empty``, ``io``)."""


class GuestNotFound(GuestFileError):
    """The program or the guest file does not exist (``not_found``)."""


class VmError(NookError):
    """The VM, its engine or its agent failed (``vm``): a failed boot, a
    snapshot that cannot be restored, a command that may not run."""


class ImageUnavailable(NookError):
    """The image is not in the store, or cannot be read or built
    (``unavailable``): ``nook pull`` it first."""


_BY_CODE: dict[str, type[NookError]] = {
    "bad_request": ProtocolError,
    "unknown_type": ProtocolError,
    "line_too_long": ProtocolError,
    "version_mismatch": VersionMismatch,
    "no_session": SandboxNotFound,
    "session_exists": SandboxExists,
    "session_state": SandboxStateError,
    "no_exec": ProcessNotFound,
    "no_process": ProcessNotFound,
    "not_found": GuestNotFound,
    "not_executable": GuestFileError,
    "not_a_directory": GuestFileError,
    "is_a_directory": GuestFileError,
    "permission_denied": GuestFileError,
    "not_empty": GuestFileError,
    "io": GuestFileError,
    "vm": VmError,
    "unavailable": ImageUnavailable,
}


def error_from_code(code: str, message: str) -> NookError:
    """The exception for a daemon error reply (unknown codes: :class:`NookError`)."""
    return _BY_CODE.get(code, NookError)(code, message)
