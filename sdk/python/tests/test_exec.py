"""Commands: results, exit codes, stderr, timeouts, binary output, stdin,
env and cwd, streaming, background processes."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from nook import ExecEvent, GuestNotFound, Sandbox


def test_exec_result_exit_code_and_stderr(sandbox: Sandbox) -> None:
    r = sandbox.exec("echo out; echo err >&2; exit 3")
    assert r.stdout == b"out\n"
    assert r.stderr == b"err\n"
    assert r.exit_code == 3 and not r.ok and not r.timed_out
    r = sandbox.exec(["echo", "a b", "c"])
    assert r.ok and r.stdout_text == "a b c\n"


def test_exec_env_cwd_and_stdin(sandbox: Sandbox) -> None:
    r = sandbox.exec("echo $GREETING; pwd", env={"GREETING": "hi there"}, cwd="/tmp")
    assert r.stdout_text == "hi there\n/tmp\n"
    data = os.urandom(300_000)
    r = sandbox.exec("sha256sum", stdin=data)
    assert r.stdout_text.split()[0] == hashlib.sha256(data).hexdigest()
    assert sandbox.exec(["cat"], stdin="text in\n").stdout == b"text in\n"


def test_exec_timeout_kills_the_command(sandbox: Sandbox) -> None:
    start = time.monotonic()
    r = sandbox.exec("echo before; sleep 30; echo after", timeout=1.5)
    took = time.monotonic() - start
    assert r.timed_out
    assert r.stdout == b"before\n"
    assert took < 20, f"the timeout took {took:.1f} s"


def test_exec_large_binary_output_byte_for_byte(sandbox: Sandbox) -> None:
    data = os.urandom(6 * 1024 * 1024 + 123)
    sandbox.write("/tmp/big.bin", data)
    r = sandbox.exec(["cat", "/tmp/big.bin"])
    assert r.ok
    assert len(r.stdout) == len(data)
    assert r.stdout == data


def test_missing_program_is_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(GuestNotFound):
        sandbox.exec(["/no/such/program"])


def test_streaming_with_callbacks(sandbox: Sandbox) -> None:
    seen: list[tuple[str, bytes, float]] = []
    r = sandbox.exec(
        "echo one; sleep 1; echo two >&2; echo three",
        on_stdout=lambda b: seen.append(("out", b, time.monotonic())),
        on_stderr=lambda b: seen.append(("err", b, time.monotonic())),
    )
    done = time.monotonic()
    assert r.ok and r.stdout == b"one\nthree\n" and r.stderr == b"two\n"
    assert b"".join(b for k, b, _ in seen if k == "out") == b"one\nthree\n"
    assert b"".join(b for k, b, _ in seen if k == "err") == b"two\n"
    first = seen[0]
    assert first[1].startswith(b"one")
    assert done - first[2] > 0.5, "the first chunk came only at the end"


def test_streaming_as_an_iterator(sandbox: Sandbox) -> None:
    events: list[tuple[ExecEvent, float]] = []
    for ev in sandbox.exec_stream("for i in 1 2 3; do echo line$i; sleep 0.4; done; exit 7"):
        events.append((ev, time.monotonic()))
    kinds = [e.kind for e, _ in events]
    assert kinds[-1] == "exit" and kinds.count("exit") == 1
    result = events[-1][0].result
    assert result is not None and result.exit_code == 7
    assert b"".join(e.data for e, _ in events if e.kind == "stdout") == b"line1\nline2\nline3\n"
    assert events[-1][1] - events[0][1] > 0.5, "events were not streamed as they came"


def test_background_process(sandbox: Sandbox) -> None:
    p = sandbox.exec("echo started; sleep 1000", background=True)
    assert p.pid > 0
    assert p.poll() is None
    deadline = time.monotonic() + 10
    out = b""
    while b"started" not in out and time.monotonic() < deadline:
        out += p.read()
        time.sleep(0.1)
    assert out == b"started\n"
    p.kill()
    r = p.wait()
    assert r.exit_code is None and r.signal == 9
    assert r.stdout == b"started\n"
    assert p.poll() is not None


def test_background_process_stdin(sandbox: Sandbox) -> None:
    p = sandbox.exec(["sh", "-c", "cat; echo done >&2"], background=True, stdin=True)
    p.send_stdin("hello ")
    p.send_stdin(b"world\n", close=True)
    r = p.wait()
    assert r.ok
    assert r.stdout == b"hello world\ndone\n"
    assert p.output() == r.stdout


def test_leaving_a_stream_early_kills_the_command(sandbox: Sandbox) -> None:
    for ev in sandbox.exec_stream("echo first; exec sleep 1234"):
        assert ev.kind == "stdout" and ev.data == b"first\n"
        break
    ps = sandbox.exec("ps").stdout_text
    assert "sleep 1234" not in ps, ps
    # The connection goes on.
    assert sandbox.exec("echo after").stdout == b"after\n"


def test_threads_share_one_connection(sandbox: Sandbox) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: sandbox.exec(f"sleep 0.3; echo {i}"), range(8)))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(8)]
