"""Selective search (Uijlings et al. 2013): class-independent object proposals by grouping regions.

    boxes = selective_search(image, mode="fast")   # image uint8 [H, W, 3] -> [N, 4] ranked

Per strategy: Felzenszwalb-Huttenlocher regions of the image in one colour
space with threshold k (`felzenszwalb`: scikit-image's segmentation with the
sorted graph shared by the k of one colour space; sigma 0.8, min_size k
on VOC-sized images, see `features.min_size` for smaller ones),
then greedy hierarchical grouping under one similarity set (`grouping`).
Every region of every hierarchy is a proposal. The modes are the paper's
single strategy, Selective Search Fast and Selective Search Quality:

  single   HSV                      C+T+S+F                  k = 100           1 strategy
  fast     HSV, Lab                 C+T+S+F, T+S+F           k = 50, 100       8 strategies
  quality  HSV, Lab, rgI, H, I      C+T+S+F, T+S+F, F, S     k = 50, 100, 150, 300  80

Ranking as the paper and the authors' code: the m merged regions of one
hierarchy get, in the order they were made, positions m, m-1, ..., 1 (1: the
last merge, the whole image), the initial regions of a segmentation all get
m + 1 (they come once per segmentation, not once per similarity set); each
position is multiplied by a uniform random number in [0, 1), all proposals
are sorted ascending by that value, and duplicate boxes keep their first
place. The random numbers come from `numpy.random.default_rng(seed)`, so a
fixed seed (default 0) gives the same boxes in the same order, with or
without worker processes. The authors' demo then drops boxes narrower than
20 pixels; that is a data set choice (VOC), not done here.

Where this differs from the authors' Matlab code: min_size shrinks on images
smaller than VOC's (`features.min_size`); texture uses the paper's sigma 1 on
every channel (the code uses 0.8 and, by a slip, the first channel three
times); histogram bins are equally wide; the texture histograms' upper bound
0.43 is the code's.

Strategies are independent: one task per (colour space, k). By default they
run in this process; `workers=` opts into a process pool that stays alive
between calls. A task's similarity sets share its histograms, and a process
bins each colour space's pixels and sorts its pixel graph once per image,
for all its k (`felzenszwalb.Graph`).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import multiprocessing
import numbers
import os
import signal
from typing import NamedTuple

import numpy as np

from research.detection.selective_search import features, felzenszwalb, grouping
from research.detection.selective_search.metrics import best_overlaps, mabo, recall

__all__ = ["MODES", "Strategy", "selective_search", "recall", "mabo", "best_overlaps"]


class Strategy(NamedTuple):
  """A diversification: every colour space x every k x every similarity set is one hierarchy."""

  colour_spaces: tuple[str, ...]
  ks: tuple[int, ...]
  measures: tuple[str, ...]


MODES = {
  "single": Strategy(("hsv",), (100,), ("CTSF",)),
  "fast": Strategy(("hsv", "lab"), (50, 100), ("CTSF", "TSF")),
  "quality": Strategy(
    ("hsv", "lab", "rgi", "h", "i"), (50, 100, 150, 300), ("CTSF", "TSF", "F", "S")
  ),
}


_cache: dict = {}


def _colour_space(image: np.ndarray, colour_space: str):
  """(`features.pixel_codes`, `felzenszwalb.Graph`), remembered for the latest (image, space).

  Tasks come colour space by colour space, so a process (a worker, or this one
  with workers=1) bins a colour space's pixels and sorts its graph once per
  image for all its k; one entry bounds the memory to one colour space of one image.
  """
  key = (hashlib.blake2b(image.data, digest_size=16).digest(), image.shape, colour_space)
  if key not in _cache:
    _cache.clear()
    codes = features.pixel_codes(image, colour_space)
    _cache[key] = codes, felzenszwalb.Graph.of(codes.channels)
  return _cache[key]


def hierarchies(image: np.ndarray, colour_space: str, k: int, measures) -> tuple:
  """The groupings of one segmentation (one colour space, one k), for every similarity set.

  image: uint8 [H, W, 3] RGB; k: the FH threshold; measures: e.g. ("CTSF", "TSF").
  Returns (initial boxes [n, 4], [merged boxes [n-1, 4] per similarity set]),
  int64 (x1, y1, x2, y2), merged boxes in the order the merges made them.
  """
  codes, graph = _colour_space(image, colour_space)
  h, w = image.shape[:2]
  regions = features.regions(graph.segment(k, features.min_size(k, h, w)), codes)
  n = len(regions.sizes)
  return regions.boxes, [grouping.group(regions, m).boxes[n:] for m in measures]


def rank(results, rng: np.random.Generator) -> np.ndarray:
  """`hierarchies` outputs, concatenated in a fixed order -> float32 [N, 4] ranked, deduplicated."""
  boxes, position = [], []
  for initial, merged_sets in results:
    for merged in merged_sets:
      boxes.append(merged)
      position.append(np.arange(len(merged), 0, -1))
    boxes.append(initial)
    position.append(np.full(len(initial), len(initial)))
  boxes, position = np.concatenate(boxes), np.concatenate(position)
  order = np.argsort(position * rng.random(len(position)), kind="stable")
  boxes = boxes[order]
  side = int(boxes.max()) + 1
  keys = ((boxes[:, 0] * side + boxes[:, 1]) * side + boxes[:, 2]) * side + boxes[:, 3]
  _, first = np.unique(keys, return_index=True)  # index of each box's first occurrence
  return boxes[np.sort(first)].astype(np.float32)


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_workers = 0


def _shutdown_pool():
  global _pool
  if _pool is not None:
    _pool.shutdown(wait=True, cancel_futures=True)
    _pool = None


def _ignore_interrupts():
  # Ctrl-C (or a Jupyter kernel's shutdown) reaches the whole process group; the parent
  # handles it and shuts the pool down, the workers need not print tracebacks.
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _executor(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """The process pool, kept between calls: starting workers costs about half a second."""
  global _pool, _pool_workers
  if _pool is None or _pool_workers != workers:
    _shutdown_pool()
    # forkserver, not fork: forking a process whose other threads (jax's, grain's) hold
    # locks can deadlock the child.
    context = multiprocessing.get_context("forkserver")
    _pool = concurrent.futures.ProcessPoolExecutor(workers, context, initializer=_ignore_interrupts)
    _pool_workers = workers
  return _pool


# Before the interpreter tears modules down, or the pool's manager thread trips over them.
atexit.register(_shutdown_pool)


def _run(image: np.ndarray, tasks: list, workers: int) -> list:
  # A daemonic process (a multiprocessing.Pool worker, a data loader) may not start children.
  if workers <= 1 or len(tasks) <= 1 or multiprocessing.current_process().daemon:
    return [hierarchies(image, *task) for task in tasks]
  try:
    futures = [_executor(workers).submit(hierarchies, image, *task) for task in tasks]
    return [f.result() for f in futures]
  except concurrent.futures.process.BrokenProcessPool as e:
    global _pool
    _pool = None  # the next call starts a fresh pool
    raise RuntimeError(
      "selective_search: a worker process died. Either it was killed (memory?), or a "
      "script calls selective_search outside `if __name__ == '__main__':` (worker processes "
      "import the main module, as all multiprocessing does); or pass workers=1"
    ) from e


def _check_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
    hint = ""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
      hint = (
        "; stack a greyscale image to 3 channels, e.g. np.repeat(image.reshape(H, W, 1), 3, -1)"
      )
    elif image.dtype != np.uint8 and image.ndim == 3 and image.shape[2] == 3:
      hint = "; convert floats in [0, 1] with (image * 255).round().astype(np.uint8)"
    raise ValueError(
      "selective_search: image must be an RGB image, uint8 [H, W, 3] with H, W >= 1, "
      f"got {image.dtype} of shape {image.shape}{hint}"
    )
  return image


def selective_search(image, *, mode: str = "fast", seed: int | None = 0, workers: int | None = 1):
  """Ranked object proposals of one image.

  image: uint8 [H, W, 3] RGB. mode: "single", "fast" or "quality" (`MODES`).
  seed: the ranking's random numbers (None: fresh ones each call). workers:
  processes for the independent strategies (1, the default: all in this
  process, which works wherever Python does: scripts, stdin, notebooks,
  threads; None: one per available core). The result does not depend on it.
  Scripts that opt into worker processes call this under
  `if __name__ == "__main__":`, as all multiprocessing needs.
  Returns float32 [N, 4] (x1, y1, x2, y2) in pixel edges (a region covering
  columns 3..7 has x1 = 3, x2 = 8), best first, without duplicates.
  """
  image = _check_image(image)
  if mode not in MODES:
    raise ValueError(f"selective_search: mode must be one of {sorted(MODES)}, got {mode!r}")
  if seed is not None and not isinstance(seed, numbers.Integral):
    raise ValueError(f"selective_search: seed must be an int or None, got {seed!r}")
  if workers is None:
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  elif not isinstance(workers, numbers.Integral) or workers < 1:
    raise ValueError(f"selective_search: workers must be a positive int or None, got {workers!r}")
  strategy = MODES[mode]
  # One task per segmentation, colour space by colour space (see `_colour_space`), the
  # costliest k (the smallest: most regions) first within each.
  tasks = [(c, k, strategy.measures) for c in strategy.colour_spaces for k in strategy.ks]
  image = np.ascontiguousarray(image)
  return rank(_run(image, tasks, int(workers)), np.random.default_rng(seed))
