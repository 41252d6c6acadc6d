"""C allocator settings for the service: large short-lived buffers go back to the system.

Python keeps its small objects in its own arenas; anything larger than 512 bytes, and every
buffer OpenSSL and zlib allocate, comes from the C library's malloc. glibc serves an allocation
of MMAP_THRESHOLD bytes or more with a mapping of its own, unmapped when freed, but by default
it raises that threshold to the size of every such block freed (up to 32 MiB). The exporter frees
megabytes at a time: a scrape's body, the pieces of a plain answer, a build's buffers of lines.
After the first, blocks of up to that size came from the heaps, among long-lived blocks (kept
transcripts, rendered targets), and the heaps kept their high-water mark: at 10,000 targets
about 15 MB of RSS (docs/performance.md).

`tune()` sets the threshold once, before the config is loaded, which also turns glibc's dynamic
adjustment off. Elsewhere than glibc (musl's mallopt does nothing) it changes nothing.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # bytes: glibc's own starting value, kept


def tune() -> bool:
    """Fix glibc's mmap threshold (see the module). True if the C library took it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # no mallopt in this process: not glibc
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
