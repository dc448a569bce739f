"""Region proposals for a whole split: computed once, cached beside the data set, resumable.

    cache = proposals.ProposalCache(source, "~/tensorflow_datasets/digit_scenes/multi/1.1.0/"
                                    "proposals/test-fast", mode="fast", max_proposals=2000)
    source = proposals.WithProposals(source, cache.ensure())
    source[i]["proposals"]   # float32 [P, 4] (x1, y1, x2, y2), the record's pixels, best first

R-CNN and Fast R-CNN take their regions from selective search (Uijlings et al. 2013,
fast mode, about 2,000 per image), computed once per image before training, as the
papers did; `ensure` does it with a progress bar, one shard of `shard_size` records at
a time, each written atomically, so a killed run resumes at its first missing shard.
The directory's manifest.json holds a fingerprint of the split (its length and a hash of
some records' images and boxes), the method and the code's version: a cache made for
other data (a new data set version, another slice) or other settings is recomputed, never
silently reused. A lock file keeps two processes (a multi-host run) from computing the same.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import multiprocessing
import os

import numpy as np

from research.detection import selective_search as ss

log = logging.getLogger(__name__)

# Bumped when the proposals' computation changes, so that caches made before are recomputed.
VERSION = 1
MANIFEST = "manifest.json"


def rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 1 or 3] -> uint8 [H, W, 3]: a greyscale image stacked to three channels."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image


def propose(image: np.ndarray, mode: str = "fast", max_proposals: int = 2000) -> np.ndarray:
  """One image's selective-search proposals: float32 [P, 4], P <= max_proposals, best first.

  An image of a pixel or two has a single region; its box is its one proposal.
  """
  return ss.selective_search(rgb(image), mode=mode, workers=1)[:max_proposals]


def _propose_record(args):
  image, mode, max_proposals = args
  return propose(image, mode, max_proposals)


def fingerprint(source, samples: int = 8) -> str:
  """A hash of the split: its length and `samples` records' images and boxes, spread over it."""
  n = len(source)
  digest = hashlib.blake2b(str(n).encode(), digest_size=16)
  for i in sorted({round(j * (n - 1) / max(samples - 1, 1)) for j in range(samples)} if n else ()):
    record = source[i]
    digest.update(np.ascontiguousarray(record["image"]).tobytes())
    if "boxes" in record:
      digest.update(np.ascontiguousarray(record["boxes"], np.float32).tobytes())
  return digest.hexdigest()


@contextlib.contextmanager
def _lock(directory: str):
  with open(os.path.join(directory, ".lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class ProposalCache:
  """Selective-search proposals of every record of `source`, stored under `directory`.

  source: random access (len, __getitem__) to records with "image" uint8 [H, W, C];
  mode: selective search's "single", "fast" (R-CNN's) or "quality"; max_proposals: the
  best-ranked proposals kept per image; shard_size: records per file (the unit of
  resumption); workers: processes computing images in parallel (1: this process);
  progress: a tqdm bar while computing.
  """

  def __init__(
    self,
    source,
    directory: str,
    *,
    mode: str = "fast",
    max_proposals: int = 2000,
    shard_size: int = 100,
    workers: int = 1,
    progress: bool = True,
  ):
    if mode not in ss.MODES:
      raise ValueError(f"proposals: mode must be one of {sorted(ss.MODES)}; received {mode!r}.")
    for key, value in (("max_proposals", max_proposals), ("shard_size", shard_size)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"proposals: {key} must be a positive int; received {value!r}.")
    if not isinstance(workers, int) or workers < 1:
      raise ValueError(f"proposals: workers must be a positive int; received {workers!r}.")
    self.source, self.directory = source, os.path.expanduser(directory)
    self.mode, self.max_proposals, self.shard_size = mode, max_proposals, shard_size
    self.workers, self.progress = workers, progress
    self._shards: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  @property
  def num_shards(self) -> int:
    return -(-len(self.source) // self.shard_size)

  def _shard_path(self, k: int) -> str:
    return os.path.join(self.directory, f"shard-{k:05d}.npz")

  def _manifest(self) -> dict:
    return {
      "version": VERSION,
      "method": "selective_search",
      "mode": self.mode,
      "max_proposals": self.max_proposals,
      "shard_size": self.shard_size,
      "num_records": len(self.source),
      "fingerprint": fingerprint(self.source),
    }

  def _check_manifest(self) -> None:
    """Removes shards made for other data or settings; writes this cache's manifest."""
    path = os.path.join(self.directory, MANIFEST)
    expected = self._manifest()
    if os.path.exists(path):
      with open(path) as f:
        found = json.load(f)
      if found == expected:
        return
      changed = sorted(k for k in expected if found.get(k) != expected[k])
      log.warning(
        "proposals: the cache in %s was made for other data or settings (%s differ); "
        "recomputing it.",
        self.directory,
        ", ".join(changed),
      )
    for old in glob.glob(os.path.join(self.directory, "shard-*.npz")):
      os.remove(old)
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
      json.dump(expected, f, indent=1)
    os.replace(temporary, path)

  def ensure(self) -> ProposalCache:
    """Computes the missing shards (with a progress bar); returns self."""
    os.makedirs(self.directory, exist_ok=True)
    with _lock(self.directory):
      self._check_manifest()
      missing = [k for k in range(self.num_shards) if not os.path.exists(self._shard_path(k))]
      if missing:
        self._compute(missing)
    return self

  def _compute(self, shards: list[int]) -> None:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

    n = len(self.source)
    done = n - sum(min(self.shard_size, n - k * self.shard_size) for k in shards)
    bar = tqdm(
      total=n,
      initial=done,
      desc=f"selective search ({self.mode}) -> {self.directory}",
      unit="img",
      disable=not self.progress,
    )
    pool = None
    if self.workers > 1 and not multiprocessing.current_process().daemon:
      # forkserver: forking a process whose threads (jax's, grain's) hold locks can deadlock.
      context = multiprocessing.get_context("forkserver")
      pool = concurrent.futures.ProcessPoolExecutor(self.workers, context)
    try:
      for k in shards:
        indices = range(k * self.shard_size, min((k + 1) * self.shard_size, n))
        tasks = ((self.source[i]["image"], self.mode, self.max_proposals) for i in indices)
        results = []
        for boxes in pool.map(_propose_record, tasks) if pool else map(_propose_record, tasks):
          results.append(boxes)
          bar.update(1)
        counts = np.array([len(b) for b in results], np.int64)
        path = self._shard_path(k)
        temporary = path + ".tmp.npz"
        np.savez(temporary, boxes=np.concatenate(results).astype(np.float32), counts=counts)
        os.replace(temporary, path)  # a shard is there whole or not at all
    finally:
      bar.close()
      if pool is not None:
        pool.shutdown(cancel_futures=True)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> np.ndarray:
    """float32 [P, 4] the proposals of record `index`, best first."""
    n = len(self.source)
    if not -n <= index < n:
      raise IndexError(f"proposals: index {index} out of range for {n} records.")
    index %= n
    k, i = divmod(index, self.shard_size)
    if k not in self._shards:
      path = self._shard_path(k)
      if not os.path.exists(path):
        raise FileNotFoundError(
          f"proposals: {path} is missing; call ensure() to compute the split's proposals."
        )
      with np.load(path) as shard:
        boxes, counts = shard["boxes"], shard["counts"]
      self._shards[k] = boxes, np.concatenate([[0], np.cumsum(counts)])
    boxes, offsets = self._shards[k]
    return boxes[offsets[i] : offsets[i + 1]]


class WithProposals:
  """Records of `source` with "proposals" float32 [P, 4] from `proposals` (a ProposalCache)."""

  def __init__(self, source, proposals):
    if len(proposals) != len(source):
      raise ValueError(
        f"proposals: {len(proposals)} proposal sets for {len(source)} records of the source."
      )
    self.source, self.proposals = source, proposals

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return {**self.source[index], "proposals": self.proposals[index]}

  def __getattr__(self, name):  # class_names, image_ids, ... of the source
    if name in ("source", "proposals"):  # not yet set (unpickling): no recursion
      raise AttributeError(name)
    return getattr(self.source, name)
