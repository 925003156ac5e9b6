"""nook's Python SDK: run code in hardware-isolated Linux microVMs through
nook's daemon (``nook serve``), started on demand.

    from nook import Sandbox

    with Sandbox.create(memory_mib=256) as sb:
        print(sb.exec("echo hello from $(uname -n)").stdout_text)

See the package README for the whole API, and ``nook.aio`` /
:class:`AsyncSandbox` for asyncio.
"""

from .aio import AsyncClient, AsyncProcess, AsyncSandbox
from .client import Client
from .desktop import AsyncDesktop, Desktop, Screenshot
from .errors import (
    ConnectionLost,
    DaemonUnavailable,
    GuestFileError,
    GuestNotFound,
    ImageUnavailable,
    NookError,
    ProcessNotFound,
    ProtocolError,
    SandboxExists,
    SandboxNotFound,
    SandboxStateError,
    SessionError,
    VersionMismatch,
    VmError,
)
from .sandbox import Process, Sandbox
from .types import (
    Command,
    CreateOptions,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    SandboxInfo,
    Share,
    SnapshotInfo,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncDesktop",
    "AsyncProcess",
    "AsyncSandbox",
    "Client",
    "Command",
    "ConnectionLost",
    "CreateOptions",
    "DaemonUnavailable",
    "Desktop",
    "ExecEvent",
    "ExecOptions",
    "ExecResult",
    "FileInfo",
    "GuestFileError",
    "GuestNotFound",
    "ImageUnavailable",
    "NookError",
    "Process",
    "ProcessNotFound",
    "ProtocolError",
    "Sandbox",
    "SandboxExists",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxStateError",
    "Screenshot",
    "SessionError",
    "Share",
    "SnapshotInfo",
    "VersionMismatch",
    "VmError",
]
