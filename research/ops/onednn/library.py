"""Whether the oneDNN extension can run here: built, loaded and registered with XLA once."""

from __future__ import annotations

import functools
import os
import platform

from research.ops.onednn import build

# FFI target names -> the handler symbols of conv.cc.
TARGETS = {
  "research_onednn_conv_forward": "ResearchOnednnConvForward",
  "research_onednn_conv_forward_bias": "ResearchOnednnConvForwardBias",
  "research_onednn_conv_backward_data": "ResearchOnednnConvBackwardData",
  "research_onednn_conv_backward_weights": "ResearchOnednnConvBackwardWeights",
  "research_onednn_conv_backward_weights_bias": "ResearchOnednnConvBackwardWeightsBias",
}


def _cpu_flags() -> set[str]:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def threads() -> int:
  """oneDNN's OpenMP threads per call: `$RESEARCH_ONEDNN_THREADS`, else every core this
  process may run on."""
  value = os.environ.get("RESEARCH_ONEDNN_THREADS")
  if value:
    if not value.isdigit() or int(value) < 1:
      raise ValueError(f"RESEARCH_ONEDNN_THREADS: expected a positive integer; received {value!r}.")
    return int(value)
  return len(os.sched_getaffinity(0))


@functools.cache
def status() -> tuple[bool, str]:
  """(available, description): ("oneDNN 3.2.0, 2 threads") or why not."""
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    return False, f"oneDNN extension is built for Linux x86-64 only, not {platform.machine()}"
  if "avx2" not in _cpu_flags():
    return False, "this CPU has no AVX2"
  try:
    library = build.load()
  except build.BuildError as error:
    return False, str(error)
  import jax  # pylint: disable=import-outside-toplevel

  library.research_onednn_set_threads(threads())
  for name, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  version = library.research_onednn_version()
  return (
    True,
    f"oneDNN {version // 10000}.{version // 100 % 100}.{version % 100}, {threads()} threads",
  )


def available() -> bool:
  """Whether the oneDNN convolutions can run on this machine's CPU backend."""
  return status()[0]
