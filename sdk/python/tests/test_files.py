"""Guest files: write/read, list, stat, mkdir, remove, and a 10 MiB random
file's round trip through upload and download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nook import GuestFileError, GuestNotFound, Sandbox


def test_write_read_list_stat_mkdir_remove(sandbox: Sandbox) -> None:
    sandbox.mkdir("/tmp/files/a/b")
    sandbox.write("/tmp/files/a/hello.txt", "héllo\n", mode=0o600)
    sandbox.write("/tmp/files/a/empty", b"")
    assert sandbox.read("/tmp/files/a/hello.txt") == "héllo\n".encode()
    assert sandbox.read_text("/tmp/files/a/hello.txt") == "héllo\n"
    assert sandbox.read("/tmp/files/a/empty") == b""
    st = sandbox.stat("/tmp/files/a/hello.txt")
    assert st.is_file and st.size == len("héllo\n".encode()) and st.mode == 0o600
    entries = {e.name: e for e in sandbox.list("/tmp/files/a")}
    assert sorted(entries) == ["b", "empty", "hello.txt"]
    assert entries["b"].is_dir
    assert sandbox.exists("/tmp/files/a/b") and not sandbox.exists("/tmp/files/nope")
    with pytest.raises(GuestFileError):
        sandbox.remove("/tmp/files/a")  # not empty, not recursive
    sandbox.remove("/tmp/files", recursive=True)
    assert not sandbox.exists("/tmp/files")
    with pytest.raises(GuestNotFound):
        sandbox.read("/tmp/files/a/hello.txt")


def test_ten_mib_random_file_round_trip(sandbox: Sandbox, tmp_path: Path) -> None:
    data = os.urandom(10 * 1024 * 1024 + 7)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    src.chmod(0o640)
    sandbox.upload(src, "/tmp/rt.bin")
    st = sandbox.stat("/tmp/rt.bin")
    assert st.size == len(data) and st.mode == 0o640
    dst = tmp_path / "dst.bin"
    sandbox.download("/tmp/rt.bin", dst)
    assert dst.read_bytes() == data
    assert sandbox.read("/tmp/rt.bin") == data
    assert sandbox.read("/tmp/rt.bin", max_bytes=1000) == data[:1000]
    sandbox.write("/tmp/rt2.bin", data)
    r = sandbox.exec("cmp /tmp/rt.bin /tmp/rt2.bin && echo same")
    assert r.stdout == b"same\n", r.stderr


def test_failed_download_leaves_no_file(sandbox: Sandbox, tmp_path: Path) -> None:
    dst = tmp_path / "never.bin"
    with pytest.raises(GuestNotFound):
        sandbox.download("/no/such/file", dst)
    assert list(tmp_path.iterdir()) == []
