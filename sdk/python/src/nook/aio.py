"""The asyncio flavour: ``AsyncSandbox`` has :class:`~nook.Sandbox`'s
methods as coroutines, on an asyncio Unix stream. Requests and replies are
the same operations (``nook._protocol``), carried out by an event loop
instead of a reader thread."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, Unpack, overload

from . import _protocol as proto
from ._daemon import connect_socket
from ._handles import ProcessBase, SandboxBase
from .errors import GuestNotFound, NookError, SandboxNotFound
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

T = TypeVar("T")


class AsyncClient:
    """A connection to ``nook serve`` for asyncio code: make one with
    ``await AsyncClient.connect()``. Like :class:`~nook.Client`, it starts
    a daemon when none answers (``autostart``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._router: proto.Router[asyncio.Queue[proto.Item]] = proto.Router()
        self._task = asyncio.get_running_loop().create_task(self._read_loop(), name="nook-sdk-reader")
        self.server_version = ""

    @classmethod
    async def connect(
        cls,
        socket_path: str | Path | None = None,
        *,
        autostart: bool = True,
        client_name: str = "nook-python-asyncio",
    ) -> AsyncClient:
        path = Path(socket_path) if socket_path else None
        sock = await asyncio.to_thread(connect_socket, path, autostart)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=proto.MAX_LINE + 1024)
        self = cls(reader, writer)
        try:
            hello = await self.run(proto.handshake(client_name))
        except BaseException:
            await self.close()
            raise
        self.server_version = str(hello.get("server_version", ""))
        return self

    async def _read_loop(self) -> None:
        why = "end of stream"
        try:
            while line := await self._reader.readline():
                self._router.deliver(line, asyncio.Queue.put_nowait)
        except (OSError, ValueError) as e:
            why = str(e)
        self._router.close(why, asyncio.Queue.put_nowait)

    async def _perform(self, step: proto.Step) -> Any:
        if isinstance(step, proto.Send):
            channel: asyncio.Queue[proto.Item] = asyncio.Queue()
            rid, line = self._router.open(step.body, channel)
            try:
                self._writer.write(line)
                await self._writer.drain()
            except OSError as e:
                raise proto.lost(str(e)) from None
            return rid
        if isinstance(step, proto.Recv):
            return self._router.taken(step.rid, await self._router.channel(step.rid).get())
        return None

    async def _drive(self, d: proto.Driver[Any], emit: bool) -> AsyncIterator[ExecEvent]:
        try:
            while (step := d.next_step()) is not None:
                if isinstance(step, proto.Emit):
                    if emit:
                        yield step.event
                    continue
                try:
                    d.resume(await self._perform(step))
                except NookError as e:
                    d.resume(error=e)
        finally:
            # The caller left early (broke out of a stream, a cancelled
            # task): let the op tidy up, e.g. kill its command.
            if d.cancel():
                with contextlib.suppress(proto.Cancelled, NookError):
                    async for _ in self._drive(d, emit=False):
                        pass

    async def run(self, op: proto.Op[T]) -> T:
        """Carries an operation out; returns its result."""
        d = proto.Driver(op)
        async for _ in self._drive(d, emit=False):
            pass
        return d.result  # type: ignore[return-value]

    def stream(self, op: proto.Op[Any]) -> AsyncIterator[ExecEvent]:
        """Carries an operation out, yielding its events as they come."""
        return self._drive(proto.Driver(op), emit=True)

    async def sandboxes(self) -> list[SandboxInfo]:
        """Every session nook knows (as ``nook ps -a``)."""
        return await self.run(proto.list_sessions())

    async def close(self) -> None:
        """Closes the connection: sandboxes it created without ``keep``
        are stopped and removed by the daemon."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        await self._task

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncSandbox(SandboxBase[AsyncClient]):
    """:class:`~nook.Sandbox` for asyncio: the same methods, as coroutines
    (``exec_stream`` is an async iterator); ``async with`` removes it."""

    @classmethod
    async def _open(
        cls, client: AsyncClient | None, op: proto.Op[SandboxInfo], owned: bool, pooled: bool = False
    ) -> Self:
        own = client is None
        c = client if client is not None else await AsyncClient.connect()
        try:
            info = await c.run(op)
        except BaseException:
            if own:
                await c.close()
            raise
        sandbox = cls(c, info, owned=owned, own_client=own)
        sandbox._pooled = pooled
        return sandbox

    @classmethod
    async def create(
        cls, image: str | None = None, *, client: AsyncClient | None = None, **options: Unpack[CreateOptions]
    ) -> Self:
        op = proto.create(options, image=image)
        return await cls._open(client, op, owned=not options.get("keep", False))

    @classmethod
    async def from_snapshot(
        cls, snapshot: str, *, client: AsyncClient | None = None, **options: Unpack[CreateOptions]
    ) -> Self:
        op = proto.create(options, snapshot=snapshot)
        return await cls._open(client, op, owned=not options.get("keep", False))

    @classmethod
    async def connect(cls, name: str, *, client: AsyncClient | None = None) -> Self:
        return await cls._open(client, proto.inspect(name), owned=False)

    async def refresh(self) -> SandboxInfo:
        self.info = await self.client.run(proto.inspect(self.name))
        return self.info

    async def kill(self) -> None:
        with contextlib.suppress(SandboxNotFound):
            await self.client.run(proto.remove(self.name, self._pooled))
        self._owned = False
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._owned:
                with contextlib.suppress(SandboxNotFound):
                    await self.client.run(proto.remove(self.name, self._pooled))
        finally:
            if self._own_client:
                await self.client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def snapshot(self, name: str) -> SnapshotInfo:
        return await self.client.run(proto.snapshot(self.name, name))

    @overload
    async def exec(
        self, cmd: Command, *, background: Literal[False] = False, **options: Unpack[ExecOptions]
    ) -> ExecResult: ...

    @overload
    async def exec(
        self, cmd: Command, *, background: Literal[True], **options: Unpack[ExecOptions]
    ) -> AsyncProcess: ...

    async def exec(
        self, cmd: Command, *, background: bool = False, **options: Unpack[ExecOptions]
    ) -> ExecResult | AsyncProcess:
        if background:
            return AsyncProcess(self, await self.client.run(proto.exec_background(self.name, cmd, options)))
        return await self.client.run(proto.exec_attached(self.name, cmd, options))

    def exec_stream(self, cmd: Command, **options: Unpack[ExecOptions]) -> AsyncIterator[ExecEvent]:
        return self.client.stream(proto.exec_attached(self.name, cmd, options, collect=False))

    async def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        return await self.client.run(proto.read_all(self.name, path, max_bytes))

    async def read_text(self, path: str, *, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def write(self, path: str, data: Data, *, mode: int = 0o644) -> None:
        await self.client.run(proto.write(self.name, path, proto.chunks(proto.as_bytes(data)), mode))

    async def upload(self, local: str | os.PathLike[str], remote: str, *, mode: int | None = None) -> None:
        mode = proto.upload_mode(local, mode)
        await self.client.run(proto.write(self.name, remote, proto.file_pieces(local), mode))

    async def download(self, remote: str, local: str | os.PathLike[str]) -> None:
        with proto.download_target(local) as f:
            await self.client.run(proto.read(self.name, remote, f.write, None))

    async def list(self, path: str) -> builtins.list[FileInfo]:
        return await self.client.run(proto.list_dir(self.name, path))

    async def stat(self, path: str) -> FileInfo:
        return await self.client.run(proto.stat(self.name, path))

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
            return True
        except GuestNotFound:
            return False

    async def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        await self.client.run(proto.mkdir(self.name, path, mode))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self.client.run(proto.remove_path(self.name, path, recursive))


class AsyncProcess(ProcessBase[AsyncSandbox]):
    """:class:`~nook.Process` for asyncio."""

    async def wait(self) -> ExecResult:
        return await self.sandbox.client.run(proto.proc_wait(self.sandbox.name, self.pid))

    async def poll(self) -> ExecResult | None:
        return await self.sandbox.client.run(proto.proc_poll(self.sandbox.name, self.pid))

    async def read(self) -> bytes:
        op = proto.proc_output(self.sandbox.name, self.pid, self._offset)
        data, self._offset, _ = await self.sandbox.client.run(op)
        return data

    async def output(self) -> bytes:
        return (await self.sandbox.client.run(proto.proc_output(self.sandbox.name, self.pid)))[0]

    async def send_stdin(self, data: Data, *, close: bool = False) -> None:
        await self.sandbox.client.run(
            proto.proc_stdin(self.sandbox.name, self.pid, proto.as_bytes(data), close)
        )

    async def kill(self, signal: int = proto.SIGKILL) -> None:
        await self.sandbox.client.run(proto.proc_signal(self.sandbox.name, self.pid, signal))
