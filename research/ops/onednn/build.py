"""Builds `conv.cc` into a shared library against the installed oneDNN, once per machine.

The library is compiled on first use with the machine's C++ compiler (`$CXX`, else
g++ or c++) against oneDNN 3.x from the environment (`libdnnl.so.3` in
`<prefix>/lib`, headers in `<prefix>/include`, as the `onednn-cpu-gomp` and
`onednn-devel-cpu-gomp` wheels install them; `$RESEARCH_ONEDNN_ROOT` names another
prefix) and XLA's FFI headers from jaxlib. It is cached in
`$RESEARCH_CACHE_DIR/onednn` (default `~/.cache/research/onednn`) under a name that
hashes the source, the compiler, oneDNN's version and the FFI headers, so a change
to any of them builds a new one. Each library has a sha256 beside it: a corrupted
or truncated file is rebuilt. Builds write a temporary file and rename it, under a
file lock, so processes that start together build once and never load half a file.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("conv.cc")
ABI = 4  # kAbi in conv.cc
FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-Wno-return-type", "-Wno-attributes")


class BuildError(RuntimeError):
  """Why the library cannot be had here (no compiler, no oneDNN, a failed build)."""


def onednn_root() -> Path:
  """The prefix whose include/ and lib/ hold oneDNN 3.x; BuildError when none does."""
  candidates = [os.environ.get("RESEARCH_ONEDNN_ROOT"), sys.prefix, sys.base_prefix, "/usr"]
  for prefix in filter(None, candidates):
    root = Path(prefix)
    if (root / "include/oneapi/dnnl/dnnl.hpp").exists() and _library_dir(root) is not None:
      if onednn_version(root)[0] >= 3:
        return root
  raise BuildError(
    "no oneDNN 3.x found (expected include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so.3 under "
    f"one of {[c for c in candidates if c]}; pip install onednn-cpu-gomp onednn-devel-cpu-gomp)"
  )


def _library_dir(root: Path) -> Path | None:
  for lib in (root / "lib", root / "lib64", root / "lib/x86_64-linux-gnu"):
    if (lib / "libdnnl.so.3").exists() or (lib / "libdnnl.so").exists():
      return lib
  return None


def onednn_version(root: Path) -> tuple[int, int, int]:
  """(major, minor, patch) from the headers' dnnl_version.h."""
  text = (root / "include/oneapi/dnnl/dnnl_version.h").read_text()
  parts = [
    re.search(rf"#define DNNL_VERSION_{p}\s+(\d+)", text) for p in ("MAJOR", "MINOR", "PATCH")
  ]
  return tuple(int(m.group(1)) if m else 0 for m in parts)


def compiler() -> tuple[str, str]:
  """(path, first line of --version) of the C++ compiler; BuildError when there is none."""
  for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
    path = shutil.which(name) if name else None
    if path:
      try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
      except (OSError, subprocess.SubprocessError):
        continue
      if out.returncode == 0:
        return path, out.stdout.splitlines()[0] if out.stdout else path
  raise BuildError("no C++ compiler found ($CXX, g++, c++ or clang++)")


def cache_dir() -> Path:
  base = os.environ.get("RESEARCH_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "research"
  )
  return Path(base) / "onednn"


def _ffi_include() -> Path:
  import jax.ffi  # pylint: disable=import-outside-toplevel

  return Path(jax.ffi.include_dir())


def library_path() -> Path:
  """Where the library for this source, compiler, oneDNN and jaxlib is cached."""
  root, (_, cxx_version) = onednn_root(), compiler()
  digest = hashlib.sha256(SOURCE.read_bytes())
  digest.update(f"{cxx_version}|{onednn_version(root)}|{root}|{FLAGS}".encode())
  for header in sorted((_ffi_include() / "xla/ffi/api").glob("*.h")):
    digest.update(header.read_bytes())
  return cache_dir() / f"conv-{digest.hexdigest()[:16]}.so"


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(path: Path) -> bool:
  stamp = path.with_suffix(".sha256")
  try:
    return path.exists() and stamp.read_text().strip() == _sha256(path)
  except OSError:
    return False


def _compile(path: Path) -> None:
  cxx, _ = compiler()
  root = onednn_root()
  lib = _library_dir(root)
  fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
  os.close(fd)
  command = [
    cxx,
    *FLAGS,
    f"-I{_ffi_include()}",
    f"-I{root / 'include'}",
    str(SOURCE),
    f"-L{lib}",
    "-ldnnl",
    f"-Wl,-rpath,{lib}",
    "-o",
    tmp,
  ]
  try:
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
      raise BuildError(f"{' '.join(command)} failed:\n{out.stderr[-4000:]}")
    digest = _sha256(Path(tmp))
    stamp_fd, stamp_tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    with os.fdopen(stamp_fd, "w") as f:
      f.write(digest + "\n")
    os.replace(stamp_tmp, path.with_suffix(".sha256"))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def load() -> ctypes.CDLL:
  """The built library, loaded; built first when missing, corrupted or stale.

  Raises BuildError saying why when it cannot be built or loaded.
  """
  path = library_path()
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path.parent / "build.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    for attempt in range(2):
      if attempt or not _intact(path):
        _compile(path)
      try:
        library = ctypes.CDLL(str(path))
      except OSError as error:
        if attempt:
          raise BuildError(f"{path} does not load: {error}") from error
        continue
      if library.research_onednn_abi() == ABI:
        return library
      if attempt:
        raise BuildError(f"{path}: ABI {library.research_onednn_abi()}, expected {ABI}")
  raise AssertionError("unreachable")
