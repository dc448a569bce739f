"""glibc's malloc kept from handing XLA:CPU's buffers back to the kernel after every call.

A jitted training step on the CPU allocates its outputs and its temporaries (hundreds of MB
to GB at 224 x 224) at each call and frees them at its end. glibc serves blocks above its
mmap threshold (at most 32 MB) with fresh `mmap`s, trims the top of its heap above
M_TRIM_THRESHOLD, and gives the threads' arenas' heaps back with `madvise`; so the next
call touches new pages, and the kernel faults and zeroes each one. DenseNet-121's step at
batch 16 (benchmarks/throughput.py) took 738,000 minor faults, 3.2 s of its 7.3 s in the
kernel, on an AMD EPYC with two cores; with freed memory kept, none, and 5.5 s.

`keep_freed_memory()` sets, through `mallopt`: no mmap for large blocks (M_MMAP_MAX 0), no
trimming (M_TRIM_THRESHOLD unbounded), and one arena (M_ARENA_MAX 1: a thread arena's heap
is at most 64 MB, so a large block freed there is unmapped whatever the other settings).
The process then keeps its peak heap (what `ru_maxrss` already counts) and reuses it.

It is a process-wide setting, so the library never applies it on import: the command line
(`research.main`) and the benchmarks call it before JAX starts its CPU client, whose
threads take their arenas when they first allocate (called after that, the faults stay).
A notebook or script may call it first thing. `RESEARCH_KEEP_FREED_MEMORY=0` turns it off.
Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

# <malloc.h>'s mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# Each setting: its mallopt parameter and value, and glibc's tunable with the same effect
# for processes started later (GLIBC_TUNABLES, read at their start; the tests' children).
# mallopt's value is an int; glibc reads M_TRIM_THRESHOLD's as a size_t, so -1 is no limit.
_SETTINGS = {
  "M_MMAP_MAX": (M_MMAP_MAX, 0, "glibc.malloc.mmap_max=0"),
  "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, -1, f"glibc.malloc.trim_threshold={2**62}"),
  "M_ARENA_MAX": (M_ARENA_MAX, 1, "glibc.malloc.arena_max=1"),
}
GLIBC_TUNABLES = ":".join(tunable for _, _, tunable in _SETTINGS.values())

_applied: bool | None = None


def keep_freed_memory() -> bool:
  """Applies the settings above once per process; returns whether they are in force (False
  off glibc, when `RESEARCH_KEEP_FREED_MEMORY=0`, or when `mallopt` refuses one)."""
  global _applied  # pylint: disable=global-statement
  if _applied is not None:
    return _applied
  _applied = False
  if os.environ.get("RESEARCH_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith(
    "linux"
  ):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # Every setting is tried, so that the log names exactly the ones refused.
  refused = [name for name, (param, value, _) in _SETTINGS.items() if mallopt(param, value) != 1]
  _applied = not refused
  logging.getLogger(__name__).info(
    "Host memory: %s",
    f"mallopt refused {refused}; the others are set"
    if refused
    else "freed blocks are kept for reuse (glibc: no mmap, no trim, one arena)",
  )
  return _applied


def kept() -> bool:
  """Whether `keep_freed_memory()` is in force in this process (benchmarks record it)."""
  return bool(_applied)
