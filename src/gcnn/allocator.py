"""The process's memory allocator, tuned for tensors: :func:`retain_freed_memory`. The module itself needs only the
standard library (importing it loads the ``gcnn`` package, and so torch, as any gcnn module does)."""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
_RETAINED: list[bool] = []


def retain_freed_memory() -> bool:
    """Keep freed memory in this process (glibc's allocator: no mmap for large blocks, and no trimming of the heap
    below a 2 GiB free top; threads' own arenas still map blocks beyond their 64 MB heaps), so that the large
    tensors of every forward pass reuse pages that are already mapped instead of page-faulting new ones (a 15,000 x
    4,096 bf16 activation is 123 MB: above the 32 MB ceiling of glibc's mmap threshold, so otherwise mapped and
    unmapped at every call). Process-wide and idempotent; True where it applied, False elsewhere (another C library,
    another OS) or when the environment sets ``GCNN_RETAIN_MEMORY=0``. The process's resident size then stays at its
    peak rather than shrinking after it."""
    if _RETAINED:
        return _RETAINED[0]
    applied = False
    wanted = os.environ.get("GCNN_RETAIN_MEMORY", "1") != "0"
    if wanted and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(None)
            applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))  # C int
        except (OSError, AttributeError):
            applied = False
    _RETAINED.append(applied)
    return applied
