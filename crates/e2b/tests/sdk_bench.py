"""Benchmark of the E2B-compatible API (prints a table; asserts nothing).

Run by `NOOK_E2B_BENCH=1 scripts/e2b-test`:
- Sandbox.create() to the first commands.run result, median of 20;
- commands.run("true") round trip through the SDK (which runs
  `/bin/bash -l -c true`), beside the same command through nook's own
  session socket (the JSON-lines protocol nook's front ends use), and
  beside plain `true` through that socket and through `nook exec`.
"""

import json
import os
import socket
import statistics
import subprocess
import time

from e2b import Sandbox

NOOK = os.environ["NOOK_BIN"]
HOME = os.environ.get("NOOK_HOME") or os.path.expanduser("~/.cache/nook")
CREATES = int(os.environ.get("NOOK_E2B_BENCH_CREATES", "20"))
ROUND_TRIPS = int(os.environ.get("NOOK_E2B_BENCH_RUNS", "30"))


def timed(f, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def session_exec(sock_path, argv):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(json.dumps({"op": "exec", "argv": argv}).encode() + b"\n")
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("the session closed before the exit")
        buf += chunk
        lines = buf.split(b"\n")
        buf = lines.pop()
        for line in lines:
            if json.loads(line)["op"] in ("exit", "error"):
                s.close()
                return


def row(name, xs):
    ms = [x * 1000 for x in xs]
    print(f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |")


def main():
    creates, firsts = [], []
    for _ in range(CREATES):
        t = time.perf_counter()
        sb = Sandbox.create()
        creates.append(time.perf_counter() - t)
        sb.commands.run("true")
        firsts.append(time.perf_counter() - t)
        sb.kill()

    sb = Sandbox.create()
    sb.commands.run("true")
    sdk = timed(lambda: sb.commands.run("true"), ROUND_TRIPS)
    session = f"e2b-{sb.sandbox_id}"
    sock = os.path.join(HOME, "sessions", session, "sock")
    own = timed(lambda: session_exec(sock, ["true"]), ROUND_TRIPS)
    # What the SDK runs: every command goes through a login shell.
    own_bash = timed(lambda: session_exec(sock, ["/bin/bash", "-l", "-c", "true"]), ROUND_TRIPS)
    cli = timed(lambda: subprocess.run([NOOK, "exec", session, "--", "true"], check=True), ROUND_TRIPS)
    sb.kill()

    print("| measurement | n | median ms | min ms | max ms |")
    print("|---|---|---|---|---|")
    row("Sandbox.create()", creates)
    row("Sandbox.create() to first commands.run result", firsts)
    row('commands.run("true") through the e2b SDK (runs /bin/bash -l -c true)', sdk)
    row("exec /bin/bash -l -c true through nook's session socket", own_bash)
    row("exec true through nook's session socket", own)
    row("nook exec SESSION -- true (CLI process)", cli)
    ratio = statistics.median(sdk) / statistics.median(own_bash)
    print(f"SDK round trip / the same command through the session socket: {ratio:.2f}")


if __name__ == "__main__":
    main()
