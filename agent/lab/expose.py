"""Expose a TCP port of a lab node on 127.0.0.1 of the root namespace (the lab's monitoring net).

Why this exists: the lab's namespaces are isolated on purpose (consumer and provider VPCs have
no route to each other, and the root namespace has none to either), so a Prometheus running
on the host cannot scrape an agent inside ``pl-<lab>-client-2``. On AWS a monitoring network
(a peering, a Transit Gateway, the ECS/EC2 scrape path) gives Prometheus that reach; adding
routes between the lab's VPCs would weaken exactly the isolation the probes test. So instead
of a route, a user-space forwarder: it listens on ``127.0.0.1:<port>`` in the root namespace
and, per accepted connection, opens the upstream connection *from inside the node's
namespace*. Only the one port is reachable, only from this host, and nothing in the lab's
routing or filtering changes.

How the namespace is crossed: ``agent.rawsock.in_netns`` switches the calling *thread* into
the namespace, and a socket keeps the namespace it was created in for its whole life. The
socket is therefore created in a worker thread (``asyncio.to_thread``: ``setns`` never runs on
the event loop's thread), handed back non-blocking, and connected and driven by the ordinary
event loop.

Bounds, every one explicit: ``connect_timeout_s`` for the upstream connect, ``idle_timeout_s``
per direction without a byte, ``buffer_bytes`` per read and as the write high-water mark (a
slow reader backpressures the other side through ``drain()``), ``max_connections`` accepted
at once (more wait in the kernel's backlog). ``stop()`` closes the listener, cancels the
connection tasks and waits for them, within ``shutdown_timeout_s``.

Use::

    async with Forwarder("pl-t1-client-2", ("127.0.0.1", 9720)) as fwd:
        ...  # scrape http://127.0.0.1:{fwd.port}/metrics

    with exposed("pl-t1-client-2", 9720) as port:  # synchronous callers (tests, benches)
        ...

    python -m agent.lab.expose --netns pl-t1-client-2 --upstream 127.0.0.1:9720 --port 19720
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from agent.errors import LabError, PlprobeError
from agent.lab.stop import stop_on_signals
from agent.rawsock import in_netns

__all__ = ["ExposeStats", "Forwarder", "exposed", "main"]

CONNECT_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 60.0
BUFFER_BYTES = 64 * 1024
MAX_CONNECTIONS = 64
SHUTDOWN_TIMEOUT_S = 2.0


@dataclass
class ExposeStats:
    """Counters of one forwarder (for its log line and for tests)."""

    accepted: int = 0
    upstream_failed: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def _socket_in_netns(netns: str, family: int) -> socket.socket:
    """A non-blocking TCP socket that belongs to ``netns`` (runs in a worker thread)."""
    try:
        with in_netns(netns):
            sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise LabError(f"cannot open a socket in namespace {netns}: {exc}") from exc
    sock.setblocking(False)
    return sock


class Forwarder:
    """127.0.0.1:<port> (root namespace) -> ``upstream`` as seen from inside ``netns``."""

    def __init__(
        self,
        netns: str,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        buffer_bytes: int = BUFFER_BYTES,
        max_connections: int = MAX_CONNECTIONS,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
    ) -> None:
        self.netns = netns
        self.upstream = upstream
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.buffer_bytes = buffer_bytes
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stats = ExposeStats()
        self._slots = asyncio.Semaphore(max_connections)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        try:
            infos = socket.getaddrinfo(upstream[0], upstream[1], type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise LabError(f"upstream {upstream[0]!r} is not an address: {exc}") from exc
        self._family: socket.AddressFamily
        self._addr: tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
        self._family, _, _, _, self._addr = infos[0]

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (``port=0`` picks a free one)."""
        try:
            self._server = await asyncio.start_server(
                self._accepted, self.host, self.port, limit=self.buffer_bytes, backlog=128
            )
        except OSError as exc:
            raise LabError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self.host, self.port

    async def stop(self) -> None:
        """Stop accepting, cut every forwarded connection, wait for their tasks (bounded)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.shutdown_timeout_s)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.shutdown_timeout_s):
                    await self._server.wait_closed()
            self._server = None

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with self._slots:
                self.stats.accepted += 1
                self.stats.active += 1
                try:
                    await self._forward(reader, writer)
                except asyncio.CancelledError:
                    # only stop() cancels these tasks; ending normally keeps asyncio's stream
                    # callback from logging the cancellation as an error
                    pass
                finally:
                    self.stats.active -= 1
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        sock = await asyncio.to_thread(_socket_in_netns, self.netns, self._family)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.sock_connect(sock, self._addr)
            reader, writer = await asyncio.open_connection(sock=sock, limit=self.buffer_bytes)
        except BaseException:
            sock.close()
            raise
        writer.transport.set_write_buffer_limits(high=self.buffer_bytes)
        return reader, writer

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._open_upstream()
        except (OSError, TimeoutError, LabError):
            self.stats.upstream_failed += 1
            return
        try:
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer, "bytes_up")),
                asyncio.create_task(self._pump(up_reader, writer, "bytes_down")),
            ]
            try:
                done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                # a clean EOF was passed on (half-close): the other side may still answer,
                # bounded by its own idle timeout; an error or idle timeout ends the pair
                if pending and all(t.result() for t in done):
                    await asyncio.wait(pending)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.wait(pumps, timeout=1.0)
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(up_writer.wait_closed(), timeout=1.0)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, counter: str
    ) -> bool:
        """Copy until EOF (True: passed on as a half-close) or error/idle timeout (False)."""
        try:
            while True:
                async with asyncio.timeout(self.idle_timeout_s):
                    data = await src.read(self.buffer_bytes)
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return True
                dst.write(data)
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))
                async with asyncio.timeout(self.idle_timeout_s):
                    await dst.drain()
        except (OSError, TimeoutError):
            return False


@contextlib.contextmanager
def exposed(
    netns: str,
    port: int,
    *,
    upstream_host: str = "127.0.0.1",
    listen_port: int = 0,
    **options: float,
) -> Iterator[int]:
    """Synchronous helper: a Forwarder on its own event loop thread; yields the local port.

    For tests and benchmarks that are not asyncio code. The thread and its loop are always
    stopped on exit (also when the body raises).
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    async def run() -> None:
        # options are Forwarder's keywords: max_connections, buffer_bytes (ints) and timeouts
        fwd = Forwarder(netns, (upstream_host, port), port=listen_port, **options)  # type: ignore[arg-type]
        try:
            await fwd.start()
        except PlprobeError as exc:
            box["error"] = exc
            started.set()
            return
        box["port"] = fwd.port
        box["stop"] = stop = asyncio.Event()
        started.set()
        try:
            await stop.wait()
        finally:
            await fwd.stop()

    thread = threading.Thread(
        target=loop.run_until_complete, args=(run(),), name=f"expose-{netns}", daemon=True
    )
    thread.start()
    try:
        if not started.wait(timeout=10):
            raise LabError(f"forwarder for {netns}:{port} did not start")
        error, local_port = box.get("error"), box.get("port")
        if isinstance(error, PlprobeError):
            raise error
        if not isinstance(local_port, int):
            raise LabError(f"forwarder for {netns}:{port} started without a port")
        yield local_port
    finally:
        stop_event = box.get("stop")
        if isinstance(stop_event, asyncio.Event):
            loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout=SHUTDOWN_TIMEOUT_S + 3)
        if not thread.is_alive():
            loop.close()


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.lab.expose``: forward until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.lab.expose",
        description="Forward 127.0.0.1:PORT (root namespace) to HOST:PORT inside a namespace.",
    )
    parser.add_argument("--netns", required=True, help="namespace name, e.g. pl-t1-client-2")
    parser.add_argument("--upstream", type=_hostport, default=("127.0.0.1", 9720))
    parser.add_argument("--port", type=int, default=0, help="local port (0: any free one)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        async with Forwarder(args.netns, args.upstream, port=args.port) as fwd:
            up = f"{args.upstream[0]}:{args.upstream[1]}"
            print(f"expose: http://127.0.0.1:{fwd.port} -> {args.netns} {up}", flush=True)
            await stop_on_signals().wait()

    try:
        asyncio.run(serve())
    except PlprobeError as exc:
        print(f"expose: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
