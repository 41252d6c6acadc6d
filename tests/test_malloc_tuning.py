"""The service's C allocator setting (malloc_tuning.py), observed through glibc's own counters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# In a fresh interpreter: free one large block, then count the mapped blocks while a smaller
# one (still above the fixed threshold) is alive. glibc's mallinfo2() says how many there are.
_PROGRAM = textwrap.dedent(
    """
    import ctypes, sys
    from exporter.service import malloc_tuning

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        assert malloc_tuning.tune()
    big = bytes(8 << 20)  # mapped at first either way
    del big  # untuned, glibc now serves anything below 8 MiB from its heap
    before = libc.mallinfo2().hblks
    block = bytearray(1 << 20)
    print(libc.mallinfo2().hblks - before)
    """
)


def _mapped_blocks(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018
    except AttributeError:
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="glibc's mallinfo2 is needed to observe the setting")
def test_large_blocks_stay_mapped_after_a_larger_one_was_freed() -> None:
    assert _mapped_blocks("untuned") == 0  # the dynamic threshold rose to 8 MiB
    assert _mapped_blocks("tuned") == 1  # fixed at 128 KiB: its own mapping, unmapped when freed
