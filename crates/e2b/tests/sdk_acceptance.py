"""The E2B-compatible API against the unmodified `e2b` SDK.

Run by scripts/e2b-test with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY
pointing at `nook serve --e2b`, and NOOK_BIN naming the nook binary. Each
check prints its name; any failure raises and exits non-zero.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from e2b import (
    AuthenticationException,
    CommandExitException,
    Sandbox,
    SandboxQuery,
    SandboxState,
)

NOOK = os.environ["NOOK_BIN"]
API = os.environ["E2B_API_URL"]


def check(name):
    print(f"ok: {name}", flush=True)


def sessions_of(*sandbox_ids):
    """The nook sessions (any state) of these sandboxes."""
    out = subprocess.run([NOOK, "ps", "-a", "--json"], check=True, capture_output=True, text=True).stdout
    names = {f"e2b-{i}" for i in sandbox_ids}
    return [s["name"] for s in json.loads(out) if s["name"] in names]


def raw(path, headers, body=b"{}"):
    req = urllib.request.Request(API + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    sb = Sandbox.create(envs={"GREETING": "hello from envVars"}, metadata={"suite": "nook-e2b"})
    check("Sandbox.create()")

    r = sb.commands.run("echo hi; uname -r")
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and lines[0] == "hi", r
    assert lines[1] and lines[1][0].isdigit() and lines[1] != os.uname().release, lines
    check(f"commands.run('echo hi; uname -r') -> guest kernel {lines[1]}")

    r = sb.commands.run("echo $GREETING")
    assert r.stdout == "hello from envVars\n", r
    check("envVars reach commands")

    try:
        sb.commands.run("echo oops >&2; exit 3")
        raise AssertionError("a non-zero exit did not raise")
    except CommandExitException as e:
        assert e.exit_code == 3 and "oops" in e.stderr, e
    check("non-zero exit raises CommandExitException")

    h = sb.commands.run(
        "read line; echo got:$line > /tmp/stdin.txt; sleep 600", background=True, stdin=True
    )
    sb.commands.send_stdin(h.pid, "abc\n")
    for _ in range(100):
        if sb.files.exists("/tmp/stdin.txt"):
            break
        time.sleep(0.1)
    assert sb.files.read("/tmp/stdin.txt") == "got:abc\n"
    assert h.pid in [p.pid for p in sb.commands.list()]
    assert sb.commands.kill(h.pid)
    for _ in range(50):
        if h.pid not in [p.pid for p in sb.commands.list()]:
            break
        time.sleep(0.1)
    assert h.pid not in [p.pid for p in sb.commands.list()]
    check("background command: send_stdin, then kill")

    sb.files.write("/tmp/hello.txt", "héllo, nook\n")
    assert sb.files.read("/tmp/hello.txt") == "héllo, nook\n"
    blob = os.urandom(5 * 1024 * 1024)
    sb.files.write("/tmp/blob.bin", blob)
    back = sb.files.read("/tmp/blob.bin", format="bytes")
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(blob).hexdigest()
    r = sb.commands.run("sha256sum /tmp/blob.bin")
    assert r.stdout.split()[0] == hashlib.sha256(blob).hexdigest(), r.stdout
    check("files.write/read: text and 5 MiB of binary (sha256 equal)")

    assert sb.files.make_dir("/tmp/d/e") is True
    assert sb.files.make_dir("/tmp/d/e") is False
    sb.files.write("/tmp/d/e/f.txt", "x")
    names = sorted(e.name for e in sb.files.list("/tmp/d/e"))
    assert names == ["f.txt"], names
    assert sb.files.exists("/tmp/d/e/f.txt")
    assert not sb.files.exists("/tmp/d/nope")
    sb.files.remove("/tmp/d")
    assert not sb.files.exists("/tmp/d/e/f.txt")
    check("files.list, make_dir, exists, remove")

    sb.set_timeout(120)
    info = sb.get_info()
    left = info.end_at.timestamp() - time.time()
    assert 100 < left <= 121, left
    check("set_timeout")

    found = Sandbox.list(query=SandboxQuery(metadata={"suite": "nook-e2b"})).next_items()
    assert [s.sandbox_id for s in found] == [sb.sandbox_id], found
    none = Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items()
    assert none == [], none
    running = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING])).next_items()
    assert sb.sandbox_id in [s.sandbox_id for s in running]
    check("list with metadata and state filters")

    status = raw("/process.Process/List", {
        "Content-Type": "application/json",
        "E2b-Sandbox-Id": sb.sandbox_id,
        "X-Access-Token": "wrong",
    })
    assert status == 401, status
    try:
        Sandbox.list(api_key="wrong-key").next_items()
        raise AssertionError("a wrong API key was accepted")
    except AuthenticationException:
        pass
    check("a wrong access token and a wrong API key are refused")

    sb.kill()
    assert sb.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()]
    assert sessions_of(sb.sandbox_id) == [], sessions_of(sb.sandbox_id)
    check("kill: no VM remains")

    pausing = Sandbox.create()
    pausing.files.write("/tmp/keep.txt", "kept across pause")
    # The count lives in the shell's memory; the file only shows it.
    counter = pausing.commands.run(
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done",
        background=True,
    )
    for _ in range(300):
        if pausing.files.exists("/tmp/count") and int(pausing.files.read("/tmp/count") or 0) >= 3:
            break
        time.sleep(0.1)
    before = int(pausing.commands.run("cat /tmp/count").stdout)
    assert before >= 3, before
    pausing.pause()
    paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
    assert pausing.sandbox_id in [s.sandbox_id for s in paused], paused
    assert sessions_of(pausing.sandbox_id) == [], sessions_of(pausing.sandbox_id)
    resumed = Sandbox.connect(pausing.sandbox_id)
    assert resumed.files.read("/tmp/keep.txt") == "kept across pause"
    time.sleep(1)
    after = int(resumed.commands.run("cat /tmp/count").stdout)
    # The same process counts on from where it was: a restarted one would
    # have started again from 1.
    assert after > before, (before, after)
    resumed.commands.run(f"kill -0 {counter.pid}")
    resumed.kill()
    assert sessions_of(pausing.sandbox_id) == [], sessions_of(pausing.sandbox_id)
    check("pause() then connect(): a file and a running process's state survive")

    short = Sandbox.create(timeout=2)
    sid = short.sandbox_id
    time.sleep(5)
    assert sid not in [s.sandbox_id for s in Sandbox.list().next_items()]
    assert sessions_of(sid) == [], sessions_of(sid)
    check("a sandbox past its timeout is gone")


if __name__ == "__main__":
    main()
    print("all E2B SDK checks passed")
