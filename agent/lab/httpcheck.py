"""A tiny HTTP client run inside a lab node: one GET, classified the way the tests need.

``python -m agent.lab.httpcheck HOST [--port 80] [--timeout 1.5]`` prints one JSON line::

    {"result": "ok" | "refused" | "timeout" | "no-dns" | "reset" | "error", ...}

``no-dns`` = the name does not resolve; ``refused`` = RST to the SYN; ``timeout`` = nothing
came back (a silent drop); ``reset`` = the connection was reset after it was established.

``--hold`` keeps one connection open: it connects, prints a line, then for every line read on
stdin sends a keep-alive GET on the *same* connection and prints its result, so a test can
watch a live flow across a rule edit. Standard library only: it runs in any namespace.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys


def _resolve(host: str, port: int) -> str | None:
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return None
    return str(infos[0][4][0]) if infos else None  # AF_INET: the host is a str


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    return "error"


def _request(sock: socket.socket, host: str, path: str, keep: bool) -> dict:
    conn = "keep-alive" if keep else "close"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return {"result": "ok", "status": status, "body": body.decode("utf-8", "replace").strip()}


def check(host: str, port: int, timeout: float, path: str = "/") -> dict:
    ip = _resolve(host, port)
    if ip is None:
        return {"result": "no-dns", "host": host}
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            out = _request(sock, host, path, keep=False)
    except OSError as exc:
        return {"result": _classify(exc), "address": ip, "error": str(exc)}
    return {**out, "address": ip}


def hold(host: str, port: int, timeout: float, path: str) -> None:
    ip = _resolve(host, port)
    if ip is None:
        print(json.dumps({"result": "no-dns", "host": host}), flush=True)
        return
    try:
        sock = socket.create_connection((ip, port), timeout=timeout)
    except OSError as exc:
        print(json.dumps({"result": _classify(exc), "error": str(exc)}), flush=True)
        return
    print(json.dumps({"result": "connected", "address": ip}), flush=True)
    for _ in sys.stdin:
        try:
            out = _request(sock, host, path, keep=True)
        except OSError as exc:
            out = {"result": _classify(exc), "error": str(exc)}
        print(json.dumps(out), flush=True)
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--timeout", type=float, default=1.5)
    parser.add_argument("--path", default="/")
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args()
    if args.hold:
        hold(args.host, args.port, args.timeout, args.path)
        return
    out = check(args.host, args.port, args.timeout, args.path)
    print(json.dumps(out), flush=True)
    sys.exit(0 if out["result"] == "ok" else 1)


if __name__ == "__main__":
    main()
