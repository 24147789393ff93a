#!/usr/bin/env python3
"""RSS of a gateway through a burst of large request bodies, and after it.

    benches/body_burst.py --url http://127.0.0.1:8080 --pid PID [--key KEY] [--clients 100] [--mib 16]

Opens --clients connections at once, each POSTing a --mib MiB body to /v1/chat/completions (the
route where the deployment is found from the body's `model`), with --key or with no key, and
samples the gateway's VmRSS (from /proc) while they run, when they are done, and after --settle
seconds. The body is not JSON, so an authenticated request is refused (400) once read whole.
"""
import argparse
import socket
import threading
import time
from urllib.parse import urlparse


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def client(host, port, key, size, statuses):
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {size}\r\n" + (f"api-key: {key}\r\n" if key else "") + "connection: close\r\n\r\n"
    ).encode()
    chunk = b"a" * (1 << 20)
    try:
        s = socket.create_connection((host, port), timeout=120)
        s.sendall(head)
        sent = 0
        while sent < size:
            n = min(len(chunk), size - sent)
            s.sendall(chunk[:n])
            sent += n
        answer = s.recv(64)
    except OSError as e:
        answer = f"error: {e.__class__.__name__}".encode()
        try:
            answer = s.recv(64) or answer
        except OSError:
            pass
    statuses.append(answer.split(b"\r\n")[0].decode(errors="replace"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--key")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--settle", type=float, default=10.0)
    a = p.parse_args()
    u = urlparse(a.url)
    size = a.mib * (1 << 20) - 1024
    before = rss_mib(a.pid)
    statuses, peak = [], before
    threads = [threading.Thread(target=client, args=(u.hostname, u.port, a.key, size, statuses)) for _ in range(a.clients)]
    started = time.time()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mib(a.pid))
        time.sleep(0.05)
    done = rss_mib(a.pid)
    time.sleep(a.settle)
    after = rss_mib(a.pid)
    counts = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    print(f"clients={a.clients} body={a.mib}MiB key={'yes' if a.key else 'no'} took={time.time() - started:.1f}s")
    print(f"  answers: {counts}")
    print(f"  RSS MiB: before {before:.1f}  peak {peak:.1f}  at end {done:.1f}  after {a.settle:.0f}s {after:.1f}")


if __name__ == "__main__":
    main()
