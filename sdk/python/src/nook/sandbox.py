"""``Sandbox``: a nook microVM session driven from Python (blocking API).
The asyncio flavour with the same methods is ``nook.AsyncSandbox``."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Literal, Self, Unpack, overload

from . import _protocol as proto
from ._handles import ProcessBase, SandboxBase
from .client import Client
from .errors import GuestNotFound, SandboxNotFound
from .types import (
    Command,
    CreateOptions,
    Data,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    SandboxInfo,
    SnapshotInfo,
)


class Sandbox(SandboxBase[Client]):
    """A running microVM session.

    Create one with :meth:`create` (or :meth:`from_snapshot`), attach to an
    existing one with :meth:`connect`. As a context manager it is removed
    when the block ends, also when the block raises. Unless ``client=`` is
    given, each sandbox has a connection of its own, closed with it.
    """

    # -- lifecycle ------------------------------------------------------

    @classmethod
    def _open(
        cls, client: Client | None, op: proto.Op[SandboxInfo], owned: bool, pooled: bool = False
    ) -> Self:
        own = client is None
        c = client if client is not None else Client()
        try:
            info = c.run(op)
        except BaseException:
            if own:
                c.close()
            raise
        sandbox = cls(c, info, owned=owned, own_client=own)
        sandbox._pooled = pooled
        return sandbox

    @classmethod
    def create(
        cls, image: str | None = None, *, client: Client | None = None, **options: Unpack[CreateOptions]
    ) -> Self:
        """Boots a sandbox (see :class:`~nook.types.CreateOptions`); returns
        once it runs. ``image``: an image in nook's store, default the
        built-in minimal root."""
        op = proto.create(options, image=image)
        return cls._open(client, op, owned=not options.get("keep", False), pooled=options.get("pool", False))

    @classmethod
    def from_snapshot(
        cls, snapshot: str, *, client: Client | None = None, **options: Unpack[CreateOptions]
    ) -> Self:
        """Restores named snapshot ``snapshot`` (made by :meth:`snapshot` or
        ``nook snapshot create``) as a new sandbox; memory and CPUs are the
        snapshot's."""
        op = proto.create(options, snapshot=snapshot)
        return cls._open(client, op, owned=not options.get("keep", False), pooled=options.get("pool", False))

    @classmethod
    def connect(cls, name: str, *, client: Client | None = None) -> Self:
        """Attaches to running sandbox ``name`` (one created with
        ``keep=True``, or by ``nook start``). Closing this handle leaves it
        running; :meth:`kill` ends it."""
        return cls._open(client, proto.inspect(name), owned=False)

    def refresh(self) -> SandboxInfo:
        """The sandbox's state now."""
        self.info = self.client.run(proto.inspect(self.name))
        return self.info

    def kill(self) -> None:
        """Stops and removes the sandbox (its VM is gone when this returns)."""
        try:
            self.client.run(proto.remove(self.name, self._pooled))
        except SandboxNotFound:
            pass
        self._owned = False
        self.close()

    def close(self) -> None:
        """Releases this handle: a sandbox it created (without ``keep``) is
        removed; its own connection closes."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._owned:
                self.client.run(proto.remove(self.name, self._pooled))
        except SandboxNotFound:
            pass
        finally:
            if self._own_client:
                self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def snapshot(self, name: str) -> SnapshotInfo:
        """Snapshots the sandbox as named snapshot ``name``; it runs on. No
        command may be running (background ones included)."""
        return self.client.run(proto.snapshot(self.name, name))

    # -- commands -------------------------------------------------------

    @overload
    def exec(
        self, cmd: Command, *, background: Literal[False] = False, **options: Unpack[ExecOptions]
    ) -> ExecResult: ...

    @overload
    def exec(self, cmd: Command, *, background: Literal[True], **options: Unpack[ExecOptions]) -> Process: ...

    def exec(
        self, cmd: Command, *, background: bool = False, **options: Unpack[ExecOptions]
    ) -> ExecResult | Process:
        """Runs ``cmd`` (an argv list, or a string for ``sh -c``) and returns
        its :class:`~nook.ExecResult`; see :class:`~nook.types.ExecOptions`.
        With ``background=True`` returns a :class:`Process` at once."""
        if background:
            return Process(self, self.client.run(proto.exec_background(self.name, cmd, options)))
        return self.client.run(proto.exec_attached(self.name, cmd, options))

    def exec_stream(self, cmd: Command, **options: Unpack[ExecOptions]) -> Iterator[ExecEvent]:
        """Runs ``cmd``, yielding ``stdout``/``stderr`` events as output
        arrives and an ``exit`` event last (its result holds no output: the
        events had it)."""
        return self.client.stream(proto.exec_attached(self.name, cmd, options, collect=False))

    # -- files ----------------------------------------------------------

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """A guest file's bytes (at most ``max_bytes``)."""
        return self.client.run(proto.read_all(self.name, path, max_bytes))

    def read_text(self, path: str, *, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def write(self, path: str, data: Data, *, mode: int = 0o644) -> None:
        """Writes a guest file atomically (text as UTF-8), in chunks."""
        self.client.run(proto.write(self.name, path, proto.chunks(proto.as_bytes(data)), mode))

    def upload(self, local: str | os.PathLike[str], remote: str, *, mode: int | None = None) -> None:
        """Copies host file ``local`` to guest path ``remote`` (streamed;
        mode: the host file's, unless given)."""
        mode = proto.upload_mode(local, mode)
        self.client.run(proto.write(self.name, remote, proto.file_pieces(local), mode))

    def download(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copies guest file ``remote`` to host path ``local`` (streamed)."""
        with proto.download_target(local) as f:
            self.client.run(proto.read(self.name, remote, f.write, None))

    def list(self, path: str) -> builtins.list[FileInfo]:
        """A guest directory's entries."""
        return self.client.run(proto.list_dir(self.name, path))

    def stat(self, path: str) -> FileInfo:
        return self.client.run(proto.stat(self.name, path))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except GuestNotFound:
            return False

    def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        """``mkdir -p``."""
        self.client.run(proto.mkdir(self.name, path, mode))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a guest file (a directory tree with ``recursive``)."""
        self.client.run(proto.remove_path(self.name, path, recursive))


class Process(ProcessBase[Sandbox]):
    """A background process (``exec(..., background=True)``). Its stdout
    and stderr are kept together in the sandbox, readable any time."""

    def wait(self) -> ExecResult:
        """Waits for the process to end; the result's ``stdout`` holds all
        its output."""
        return self.sandbox.client.run(proto.proc_wait(self.sandbox.name, self.pid))

    def poll(self) -> ExecResult | None:
        """How it ended (output left out), or ``None`` while it runs."""
        return self.sandbox.client.run(proto.proc_poll(self.sandbox.name, self.pid))

    def read(self) -> bytes:
        """The output that arrived since the last ``read``."""
        data, self._offset, _ = self.sandbox.client.run(
            proto.proc_output(self.sandbox.name, self.pid, self._offset)
        )
        return data

    def output(self) -> bytes:
        """All its output so far."""
        return self.sandbox.client.run(proto.proc_output(self.sandbox.name, self.pid))[0]

    def send_stdin(self, data: Data, *, close: bool = False) -> None:
        """Writes to its stdin (started with ``stdin=True``); ``close``
        closes it after."""
        self.sandbox.client.run(proto.proc_stdin(self.sandbox.name, self.pid, proto.as_bytes(data), close))

    def kill(self, signal: int = proto.SIGKILL) -> None:
        """Sends ``signal`` (default SIGKILL) to its process group."""
        self.sandbox.client.run(proto.proc_signal(self.sandbox.name, self.pid, signal))
