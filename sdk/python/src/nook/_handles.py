"""What a sandbox handle and a background-process handle hold, the same
for the blocking and the asyncio flavour."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .types import SandboxInfo

ClientT = TypeVar("ClientT")
SandboxT = TypeVar("SandboxT", bound="SandboxBase[Any]")


class SandboxBase(Generic[ClientT]):
    def __init__(self, client: ClientT, info: SandboxInfo, *, owned: bool, own_client: bool) -> None:
        #: The connection this handle uses.
        self.client = client
        #: The sandbox's state when it was created, connected or refreshed.
        self.info = info
        # Removed by close(): created here, without `keep`.
        self._owned = owned
        # Closed by close(): opened for this handle alone.
        self._own_client = own_client
        # From the daemon's pool: given back (pool_release) rather than removed.
        self._pooled = False
        self._closed = False

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ProcessBase(Generic[SandboxT]):
    def __init__(self, sandbox: SandboxT, pid: int) -> None:
        self.sandbox = sandbox
        #: The process's pid in the guest.
        self.pid = pid
        # Where the next read() starts in its output.
        self._offset = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sandbox.name!r}, pid={self.pid})"
