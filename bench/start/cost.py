"""What a server's start costs, to its first answer: each server is started
N times (interleaved), `GET /health` is sent in a tight connect loop, and at
the first 200 the process's threads' CPU time (`/proc/<pid>/task/*/schedstat`,
nanoseconds) and its minor page faults (`/proc/<pid>/stat`) are read. Prints
medians: spawn to first answer, CPU of the main thread, CPU of the others,
page faults. kit-service runs `serve --conformance` with the JSON access log
on (as kit-bench runs it); a binary whose name contains `vgi-rpc-peer` runs
as the crate peer (`--http PORT`).

usage: python3 bench/start/cost.py NAME=BINARY [NAME=BINARY ...] [--starts N]
"""

import os
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def once(binary):
    port = free_port()
    if "vgi-rpc-peer" in os.path.basename(binary):
        args = [binary, "--http", str(port)]
    else:
        args = [binary, "serve", "--conformance", "--listen", f"127.0.0.1:{port}"]
    env = dict(os.environ, KIT_LOG_FORMAT="json", RUST_LOG="info")
    request = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    started = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while True:
            if child.poll() is not None:
                sys.exit(f"error: {binary} exited with {child.returncode} before answering")
            if time.perf_counter() - started > 30:
                sys.exit(f"error: {binary} did not answer within 30 s")
            try:
                with socket.create_connection(("127.0.0.1", port)) as c:
                    c.sendall(request)
                    if c.recv(100).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
        ready = (time.perf_counter() - started) * 1000
        main = others = 0
        for tid in os.listdir(f"/proc/{child.pid}/task"):
            with open(f"/proc/{child.pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            if int(tid) == child.pid:
                main = ns
            else:
                others += ns
        with open(f"/proc/{child.pid}/stat") as f:
            faults = int(f.read().rsplit(")", 1)[1].split()[7])
        return ready, main / 1e6, others / 1e6, faults
    finally:
        child.kill()
        child.wait()


def main():
    argv = sys.argv[1:]
    starts = 41
    if "--starts" in argv:
        i = argv.index("--starts")
        starts = int(argv[i + 1])
        del argv[i : i + 2]
    servers = [a.partition("=")[::2] for a in argv]
    if not servers or any(not name or not path for name, path in servers):
        sys.exit(__doc__)
    results = {name: [] for name, _ in servers}
    for _ in range(starts):
        for name, path in servers:
            results[name].append(once(path))
    for name, rows in results.items():
        ready, main_cpu, others, faults = (statistics.median(c) for c in zip(*rows))
        print(f"{name}: first answer {ready:.2f} ms, main thread CPU {main_cpu:.2f} ms, "
              f"other threads {others:.2f} ms, {faults:.0f} page faults ({starts} starts)")


main()
