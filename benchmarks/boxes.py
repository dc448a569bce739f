"""NMS timings: research.ops.boxes against torchvision.ops, in one process on CPU.

    python benchmarks/boxes.py [--repeat 10] [--warmup 2] [--threshold 0.5] [--json out.json]

Cases: `nms` on 1,000 and 10,000 boxes, `batched_nms` on 10,000 boxes in 20
classes. Boxes are random detections on a 1000 x 1000 image: corners uniform,
sides uniform in [1, 100], distinct random scores, classes uniform. Each line
prints milliseconds per call of both, the ratio torchvision / ours (above 1:
ours is faster), and how many boxes both kept (they must keep the same ones).
Ours is timed as a detector calls it, inside `jax.jit` with `max_output` = N,
and as an eager call of the public function (host-side value checks included).
The three calls take turns, and the medians are printed. Needs jax, torch and
torchvision.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research.ops import boxes  # noqa: E402


def random_boxes(n: int, rng, *, image: float = 1000.0, max_side: float = 100.0) -> np.ndarray:
  """[n, 4] float32 (x1, y1, x2, y2): corners uniform in the image, sides uniform in [1, max_side]."""
  xy = rng.uniform(0, image, (n, 2))
  wh = rng.uniform(1, max_side, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _timed(fns: dict, repeat: int, warmup: int) -> dict:
  """Median milliseconds per call of each `fn` (which blocks until done).

  The calls take turns, so that load from other processes hits all of them alike.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeat):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def run_case(name, n, num_classes, threshold, repeat, warmup, seed=0):
  """Times one case; returns its milliseconds, ratios, kept count and whether both kept the same."""
  rng = np.random.default_rng(seed)
  b = random_boxes(n, rng)
  s = rng.permutation(n).astype(np.float32) / n
  c = rng.integers(0, num_classes, n).astype(np.int32)
  tb, ts, tc = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c.astype(np.int64))
  jb, js, jc = jax.device_put(b), jax.device_put(s), jax.device_put(c)
  if num_classes == 1:
    tv = lambda: torchvision.ops.nms(tb, ts, threshold)
    eager = lambda: boxes.nms(jb, js, threshold, max_output=n)
    jitted = jax.jit(functools.partial(boxes.nms, iou_threshold=threshold, max_output=n))
    ours = lambda: jitted(jb, js)
  else:
    tv = lambda: torchvision.ops.batched_nms(tb, ts, tc, threshold)
    eager = lambda: boxes.batched_nms(jb, js, jc, threshold, max_output=n)
    jitted = jax.jit(functools.partial(boxes.batched_nms, iou_threshold=threshold, max_output=n))
    ours = lambda: jitted(jb, js, jc)
  ref = tv().numpy()
  idx, ok = jax.device_get(ours())
  kept = idx[ok]
  same = np.array_equal(kept, ref)
  ms = _timed(
    {
      "tv": tv,
      "jit": lambda: jax.block_until_ready(ours()),
      "eager": lambda: jax.block_until_ready(eager()),
    },
    repeat,
    warmup,
  )
  ms_tv, ms_jit, ms_eager = ms["tv"], ms["jit"], ms["eager"]
  return {
    "case": name,
    "torchvision_ms": ms_tv,
    "ours_jit_ms": ms_jit,
    "ours_eager_ms": ms_eager,
    "ratio_jit": ms_tv / ms_jit,
    "ratio_eager": ms_tv / ms_eager,
    "kept": int(len(ref)),
    "same_indices": bool(same),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeat", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--threshold", type=float, default=0.5)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)

  torch.set_num_threads(os.cpu_count() or 1)
  print(
    f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__}, "
    f"{torch.get_num_threads()} threads, IoU threshold {args.threshold}"
  )
  cases = [
    ("nms 1,000", 1000, 1),
    ("nms 10,000", 10_000, 1),
    ("batched_nms 10,000 x 20", 10_000, 20),
  ]
  results = []
  header = f"{'case':<26}{'torchvision':>12}{'ours jit':>10}{'ratio':>7}{'eager':>9}{'ratio':>7}{'kept':>7}  same"
  print(header)
  for name, n, k in cases:
    r = run_case(name, n, k, args.threshold, args.repeat, args.warmup)
    results.append(r)
    print(
      f"{name:<26}{r['torchvision_ms']:>9.2f} ms{r['ours_jit_ms']:>7.2f} ms{r['ratio_jit']:>6.2f}x"
      f"{r['ours_eager_ms']:>6.2f} ms{r['ratio_eager']:>6.2f}x{r['kept']:>7}  {r['same_indices']}"
    )
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
