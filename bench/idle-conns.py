#!/usr/bin/env python3
"""idle-conns.py - resident memory a proxy spends on idle keep-alive connections.

Opens N connections to a proxy on 127.0.0.1, sends one GET on each and reads its answer (so every
connection has carried a request and sits idle in keep-alive), then sums the resident memory (VmRSS)
of every process listening on that port (nginx's master and workers, pibl's one process) before and
after, and prints the growth. Loopback only; N is bounded and the connections are closed at the end.

    bench/idle-conns.py --port 8090 --conns 10000 --path /small
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import time


def listening_pids(port):
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return sorted({int(p) for p in re.findall(r"pid=(\d+)", out)})


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def read_answer(sock):
    """Reads one answer with a Content-Length body; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return int(head.split(b" ", 2)[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--path", default="/small")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each reading")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if args.conns > 20000:
        sys.exit("at most 20000 connections")
    pids = listening_pids(args.port)
    if not pids:
        sys.exit(f"nothing listens on 127.0.0.1:{args.port}")
    # Children of the listeners too (an nginx master's workers listen on the same socket anyway).
    time.sleep(args.settle)
    before = rss_kib(pids)
    socks, statuses = [], {}
    request = f"GET {args.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    deadline = time.monotonic() + 120
    for i in range(args.conns):
        if time.monotonic() > deadline:
            sys.exit(f"gave up after 120 s at connection {i}")
        s = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        s.sendall(request)
        status = read_answer(s)
        statuses[status] = statuses.get(status, 0) + 1
        socks.append(s)
    time.sleep(args.settle)
    after = rss_kib(listening_pids(args.port))
    open_now = sum(1 for s in socks if s.fileno() >= 0)
    for s in socks:
        s.close()
    growth = (after - before) / 1024
    print(
        f"{args.label or args.port}: {args.conns} idle keep-alive connections (answers {statuses}), "
        f"{open_now} still open: RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB (+{growth:.1f} MiB, "
        f"{(after - before) * 1024 / max(args.conns, 1):.0f} B per connection); pids {pids}"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
