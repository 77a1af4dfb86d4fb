"""Shared helpers for the two raw-packet components (``probes/syn.py``, ``observe/sniffer.py``).

Why a module of its own: both need the same small, fiddly pieces of Linux socket plumbing that
the standard library does not name — classic BPF attach (``SO_ATTACH_FILTER``), forced receive
buffers, ``AF_PACKET`` options, the Internet checksum, and entering a network namespace for one
block of code (sockets keep the namespace they were created in, which is how the lab and the
tests give an agent a socket inside a namespace without a subprocess).

Everything that touches the kernel takes a ``SocketFactory`` so that tests can inject a
factory that raises ``PermissionError`` instead of patching the ``socket`` module.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from agent.errors import ApplyError

__all__ = [
    "ETH_P_ALL",
    "ETH_P_IP",
    "PACKET_IGNORE_OUTGOING",
    "PACKET_STATISTICS",
    "SOL_PACKET",
    "BpfInsn",
    "SocketFactory",
    "VethPair",
    "attach_bpf",
    "compile_bpf",
    "default_socket_factory",
    "fold16",
    "in_netns",
    "linktype_of",
    "netns_exists",
    "packet_stats",
    "set_rcvbuf",
    "sum16",
    "veth_pair",
]

SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
CLONE_NEWNET = 0x40000000

#: libpcap link types we compile filters for
DLT_EN10MB = 1
DLT_RAW = 12

#: one classic BPF instruction: (code, jt, jf, k)
BpfInsn = tuple[int, int, int, int]

SocketFactory = Callable[[int, int, int], socket.socket]
"""``(family, type, proto) -> socket``; the one seam through which raw sockets are created."""


def default_socket_factory(family: int, type_: int, proto: int) -> socket.socket:
    return socket.socket(family, type_, proto)


# --------------------------------------------------------------------------------------------
# Internet checksum (RFC 1071), split so the hot path can add a few words to a precomputed sum
# --------------------------------------------------------------------------------------------


def sum16(data: bytes) -> int:
    """Unfolded one's-complement sum of ``data`` as big-endian 16-bit words (odd length padded)."""
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def fold16(total: int) -> int:
    """Fold a sum to 16 bits and complement it: the value that goes into a checksum field."""
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --------------------------------------------------------------------------------------------
# Classic BPF
# --------------------------------------------------------------------------------------------


def compile_bpf(expr: str, linktype: int = DLT_EN10MB) -> list[BpfInsn]:
    """Compile a pcap filter string with libpcap through scapy (needs libpcap, not root).

    The link type is explicit so compilation needs no interface (scapy otherwise asks for one:
    "Please provide an interface or linktype").
    """
    from scapy.arch.common import compile_filter, free_filter

    prog = compile_filter(expr, linktype=linktype)
    try:
        return [
            (prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf, prog.bf_insns[i].k)
            for i in range(prog.bf_len)
        ]
    finally:
        free_filter(prog)


def attach_bpf(sock: socket.socket, insns: Sequence[BpfInsn]) -> None:
    """Attach a classic BPF program (``SO_ATTACH_FILTER``); the kernel copies it."""
    raw = b"".join(struct.pack("HBBI", *insn) for insn in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(insns), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def set_rcvbuf(sock: socket.socket, nbytes: int) -> int:
    """Ask for a large receive buffer (forced past ``rmem_max`` when privileged); return it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, nbytes)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, nbytes)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def packet_stats(sock: socket.socket) -> tuple[int, int]:
    """``(packets, drops)`` since the last call (PACKET_STATISTICS resets on read)."""
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    packets, drops = struct.unpack("II", raw)
    return packets, drops


def linktype_of(ifname: str) -> int:
    """libpcap link type of an interface from sysfs (Ethernet framing unless ARPHRD_NONE).

    Read in the *current* network namespace's sysfs view, so call it inside ``in_netns``
    only if sysfs was mounted there; an unknown interface reads as Ethernet.
    """
    try:
        with open(f"/sys/class/net/{ifname}/type") as fh:
            arphrd = int(fh.read().strip())
    except (OSError, ValueError):
        return DLT_EN10MB
    return DLT_RAW if arphrd in (65534, 778) else DLT_EN10MB  # NONE, IPGRE


# --------------------------------------------------------------------------------------------
# Network namespaces
# --------------------------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(name_or_path: str) -> Iterator[None]:
    """Run a block in another network namespace (this thread only), then come back.

    Sockets created inside keep that namespace for their whole life, so an engine or sniffer
    can be opened here and then driven from the ordinary event loop. Needs CAP_SYS_ADMIN.
    ``name_or_path`` is an ``ip netns`` name or a path to a namespace file.
    """
    path = name_or_path if "/" in name_or_path else f"/var/run/netns/{name_or_path}"
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


# --------------------------------------------------------------------------------------------
# A two-namespace veth pair (tests and benchmarks of the raw-packet components)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VethPair:
    """Two fresh namespaces joined by one veth: ``a`` (ip_a, if_a) <-> ``b`` (ip_b, if_b)."""

    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    ip_a: str
    ip_b: str

    def run(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``ns`` (blocking: setup code, never the agent loop)."""
        return _run(["ip", "netns", "exec", ns, *argv], check=check)


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise ApplyError(argv, proc.returncode, proc.stderr)
    return proc


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/var/run/netns/{name}")


@contextlib.contextmanager
def veth_pair(prefix: str = "rp") -> Iterator[VethPair]:
    """Create two namespaces with unique names and a veth between them; always remove them.

    Names carry a random suffix because other labs run concurrently on the same machine.
    """
    sfx = secrets.token_hex(3)
    pair = VethPair(
        ns_a=f"{prefix}a{sfx}",
        ns_b=f"{prefix}b{sfx}",
        if_a=f"{prefix}a{sfx}"[:15],
        if_b=f"{prefix}b{sfx}"[:15],
        ip_a="10.201.0.1",
        ip_b="10.201.0.2",
    )
    created: list[str] = []
    try:
        for ns in (pair.ns_a, pair.ns_b):
            _run(["ip", "netns", "add", ns])
            created.append(ns)
        _run(
            ["ip", "link", "add", pair.if_a, "netns", pair.ns_a, "type", "veth",
             "peer", "name", pair.if_b, "netns", pair.ns_b]
        )  # fmt: skip
        for ns, ifname, ip in (
            (pair.ns_a, pair.if_a, pair.ip_a),
            (pair.ns_b, pair.if_b, pair.ip_b),
        ):
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifname])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        yield pair
    finally:
        for ns in created:
            _run(["ip", "netns", "del", ns], check=False)
