"""The asyncio flavour: the same operations through AsyncSandbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest
from conftest import qemus_of

from nook import AsyncClient, AsyncSandbox, GuestNotFound


async def _scenario(sock: Path, tmp: Path) -> None:
    async with await AsyncSandbox.create(memory_mib=256, env={"FLAVOUR": "asyncio"}) as sb:
        r = await sb.exec("echo $FLAVOUR; echo e >&2; exit 4")
        assert (r.stdout, r.stderr, r.exit_code) == (b"asyncio\n", b"e\n", 4)
        # Requests overlap on one connection.
        results = await asyncio.gather(*(sb.exec(["sh", "-c", f"sleep 0.5; echo {i}"]) for i in range(4)))
        assert [x.stdout for x in results] == [f"{i}\n".encode() for i in range(4)]
        events = [ev async for ev in sb.exec_stream("echo a; echo b >&2")]
        assert events[-1].kind == "exit" and events[-1].result is not None and events[-1].result.ok
        assert b"".join(e.data for e in events if e.kind == "stdout") == b"a\n"
        assert b"".join(e.data for e in events if e.kind == "stderr") == b"b\n"
        async with contextlib.aclosing(sb.exec_stream("echo first; exec sleep 4321")) as stream:
            async for ev in stream:
                assert ev.data == b"first\n"
                break
        assert "sleep 4321" not in (await sb.exec("ps")).stdout_text
        timed = await sb.exec("sleep 30", timeout=1)
        assert timed.timed_out

        data = os.urandom(5 * 1024 * 1024 + 1)
        await sb.write("/tmp/a.bin", data)
        assert await sb.read("/tmp/a.bin") == data
        local = tmp / "a.bin"
        await sb.download("/tmp/a.bin", local)
        assert local.read_bytes() == data
        await sb.upload(local, "/tmp/b.bin")
        assert (await sb.stat("/tmp/b.bin")).size == len(data)
        await sb.mkdir("/tmp/d/e")
        assert [e.name for e in await sb.list("/tmp/d")] == ["e"]
        await sb.remove("/tmp/d", recursive=True)
        assert not await sb.exists("/tmp/d")
        with pytest.raises(GuestNotFound):
            await sb.read("/tmp/d/nothing")

        p = await sb.exec("cat; echo bye", background=True, stdin=True)
        await p.send_stdin(b"in\n", close=True)
        done = await p.wait()
        assert done.ok and done.stdout == b"in\nbye\n"
        host = sb.info.pid
    assert qemus_of(host) == [], "the sandbox's QEMU is left behind"

    async with await AsyncClient.connect(sock, autostart=False) as c:
        with pytest.raises(RuntimeError):
            async with await AsyncSandbox.create(client=c, memory_mib=256) as sb2:
                host2 = sb2.info.pid
                raise RuntimeError("boom")
        assert sb2.name not in [s.name for s in await c.sandboxes()]
        assert qemus_of(host2) == []


def test_async_sandbox(daemon_socket: Path, tmp_path: Path) -> None:
    asyncio.run(_scenario(daemon_socket, tmp_path))
