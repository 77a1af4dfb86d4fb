"""Allocator tuning for the daemon's process (glibc only; no-ops elsewhere).

When the daemon owns its process (``Daemon(handle_signals=True)``), glibc is asked for at most
``MALLOC_ARENAS`` malloc arenas — by default every thread that mallocs (the resolver threads of
the dns probes, the view loader) gets its own, each keeping freed memory resident — and freed
heap pages are returned to the kernel (``malloc_trim``) once every endpoint has had its first
round and after each view refresh (the snapshot parse is the largest transient). Measured on
the 50-path bench: -2 MiB each (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MALLOC_ARENAS", "limit_malloc_arenas", "release_free_memory"]

#: glibc malloc arenas for the whole process
MALLOC_ARENAS = 1
_M_ARENA_MAX = -8  # mallopt parameter number (malloc.h)


def _glibc() -> Any:
    """libc through ctypes when it is glibc (has mallopt and malloc_trim), else None."""
    import ctypes  # only a daemon that owns its process tunes the allocator

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process; False where that is not possible."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas) == 1)


def release_free_memory() -> bool:
    """Give freed heap pages back to the kernel (glibc ``malloc_trim``); True if any were."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)
