"""Selective search against OpenCV's C++ `ximgproc` implementation: seconds, boxes, recall.

    python benchmarks/selective_search.py [--images astronaut chelsea coffee rocket]
        [--size 500] [--modes fast quality] [--scenes 50] [--workers 2] [--threads 2]
        [--repeat 1] [--json out.json]

Two sets of images, each run by both libraries in this process, one after the
other on the same image:
  - scikit-image's photographs, resized so that the longer side is `size`
    pixels: seconds and box counts per image, and recall and MABO against a
    few objects boxed by eye (PHOTO_BOXES);
  - the first `scenes` digit_scenes/multi test scenes (128 x 128 greyscale,
    stacked to RGB): seconds per image, boxes per image, recall at IoU >= 0.5
    and MABO (mean best overlap over all digits) against the digits' boxes.
Ratio: our seconds / OpenCV's (< 1: ours is faster); on photographs the
median of `repeat` runs, the libraries alternating. Ours runs with
`workers` processes (its pool is started before timing), OpenCV with
`cv2.setNumThreads(threads)` (its selective search runs on one core all the
same); pass --workers 1 for ours in one process.
OpenCV's modes are its own (fast: HSV, Lab x k 150, 300, 450 x 2 similarity
sets; quality: 5 colour spaces x 5 k x 4 sets), ours the paper's (see
research.detection.selective_search). The load average is printed because
timings on a shared machine move with it. Needs opencv-contrib-python.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research.detection import selective_search as ss  # noqa: E402


def photograph(name: str, size: int) -> np.ndarray:
  """scikit-image's `name` photograph as uint8 [H, W, 3], longer side `size` pixels."""
  import skimage.data  # pylint: disable=import-outside-toplevel
  import skimage.transform  # pylint: disable=import-outside-toplevel

  image = getattr(skimage.data, name)()
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, -1)
  h, w = image.shape[:2]
  scale = size / max(h, w)
  out = skimage.transform.resize(
    image[..., :3], (round(h * scale), round(w * scale)), anti_aliasing=True
  )
  return (out * 255).round().astype(np.uint8)


# Objects of the photographs boxed by eye, (x1, y1, x2, y2) in the original pixels: a
# rough ground truth, so that recall and MABO can be compared on real photographs too.
PHOTO_BOXES = {
  "astronaut": [
    (155, 15, 300, 198),
    (355, 0, 460, 290),
    (285, 345, 505, 512),
    (135, 345, 210, 420),
  ],
  "chelsea": [(135, 88, 205, 150), (290, 105, 345, 165), (245, 228, 292, 262)],
  "coffee": [(125, 15, 405, 300), (320, 70, 420, 330), (50, 75, 525, 395)],
  "rocket": [(315, 125, 350, 400), (0, 0, 90, 427), (185, 130, 212, 400), (440, 120, 470, 400)],
}


def photograph_boxes(name: str, size: int) -> np.ndarray | None:
  """PHOTO_BOXES[name] scaled as `photograph` scales the image: [n, 4], or None."""
  import skimage.data  # pylint: disable=import-outside-toplevel

  if name not in PHOTO_BOXES:
    return None
  h, w = getattr(skimage.data, name)().shape[:2]
  return np.asarray(PHOTO_BOXES[name], np.float32) * np.float32(size / max(h, w))


def digit_scenes(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """The first `count` digit_scenes/multi test scenes: (uint8 [128, 128, 3], boxes [n, 4])."""
  from research.data import datasets  # pylint: disable=import-outside-toplevel

  source = datasets.data_source("digit_scenes/multi", "test")
  out = []
  for i in range(min(count, len(source))):
    record = source[i]
    image = np.repeat(record["image"], 3, -1)
    out.append((image, record["boxes"][: int(record["num_objects"])]))
  return out


def opencv_search(image: np.ndarray, mode: str) -> np.ndarray:
  """OpenCV's selective search of an RGB uint8 image -> [N, 4] (x1, y1, x2, y2) pixel edges."""
  import cv2  # pylint: disable=import-outside-toplevel

  search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
  search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV expects BGR
  {"single": search.switchToSingleStrategy, "fast": search.switchToSelectiveSearchFast}.get(
    mode, search.switchToSelectiveSearchQuality
  )()
  rects = search.process().astype(np.float32).reshape(-1, 4)
  return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1)


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _medians(theirs_fn, ours_fn, repeat: int):
  """(theirs, median s, ours, median s), the two alternating so that both see the same load."""
  times = [], []
  for _ in range(repeat):
    theirs, t = _timed(theirs_fn)
    times[0].append(t)
    ours, t = _timed(ours_fn)
    times[1].append(t)
  return theirs, float(np.median(times[0])), ours, float(np.median(times[1]))


def run_images(names, size, modes, workers, repeat) -> list[dict]:
  rows = []
  for name in names:
    image = photograph(name, size)
    for mode in modes:
      theirs, t_theirs, ours, t_ours = _medians(
        lambda: opencv_search(image, mode),  # noqa: B023
        lambda: ss.selective_search(image, mode=mode, workers=workers),  # noqa: B023
        repeat,
      )
      rows.append(
        dict(
          images=f"{name} {image.shape[1]}x{image.shape[0]}",
          mode=mode,
          opencv_s=t_theirs,
          opencv_boxes=len(theirs),
          ours_s=t_ours,
          ours_boxes=len(ours),
        )
      )
      gt = photograph_boxes(name, size)
      if gt is not None:
        for lib, proposals in (("opencv", theirs), ("ours", ours)):
          rows[-1][f"{lib}_recall"] = ss.recall(proposals, gt)
          rows[-1][f"{lib}_mabo"] = ss.mabo(proposals, gt)
      print_row(rows[-1])
  return rows


def run_scenes(count, modes, workers) -> list[dict]:
  scenes = digit_scenes(count)
  gt = [boxes for _, boxes in scenes]
  rows = []
  for mode in modes:
    row = dict(images=f"digit_scenes test [{len(scenes)}]", mode=mode)
    for lib, search in (
      ("opencv", lambda im: opencv_search(im, mode)),  # noqa: B023
      ("ours", lambda im: ss.selective_search(im, mode=mode, workers=workers)),  # noqa: B023
    ):
      proposals, seconds = _timed(lambda: [search(im) for im, _ in scenes])  # noqa: B023
      row[f"{lib}_s"] = seconds / len(scenes)
      row[f"{lib}_boxes"] = float(np.mean([len(p) for p in proposals]))
      row[f"{lib}_recall"] = ss.recall(proposals, gt)
      row[f"{lib}_mabo"] = ss.mabo(proposals, gt)
    rows.append(row)
    print_row(row)
  return rows


HEADER = (
  f"{'images':<30} {'mode':<8} {'opencv s':>9} {'boxes':>7} {'recall':>7} {'mabo':>6}"
  f" {'ours s':>9} {'boxes':>7} {'recall':>7} {'mabo':>6} {'ours/opencv s':>14}"
)


def print_row(r: dict):
  def metric(key):
    return f"{r[key]:.3f}" if key in r else "-"

  print(
    f"{r['images']:<30} {r['mode']:<8} {r['opencv_s']:>9.2f} {r['opencv_boxes']:>7.0f}"
    f" {metric('opencv_recall'):>7} {metric('opencv_mabo'):>6} {r['ours_s']:>9.2f}"
    f" {r['ours_boxes']:>7.0f} {metric('ours_recall'):>7} {metric('ours_mabo'):>6}"
    f" {r['ours_s'] / r['opencv_s']:>14.2f}",
    flush=True,
  )


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", nargs="*", default=["astronaut", "chelsea", "coffee", "rocket"])
  parser.add_argument("--size", type=int, default=500, help="longer side of the photographs")
  parser.add_argument("--modes", nargs="+", default=["fast", "quality"], choices=sorted(ss.MODES))
  parser.add_argument("--scenes", type=int, default=50, help="digit_scenes test scenes; 0: none")
  parser.add_argument("--workers", type=int, default=2, help="our processes")
  parser.add_argument("--threads", type=int, default=2, help="cv2.setNumThreads")
  parser.add_argument("--repeat", type=int, default=1, help="photographs: median of this many")
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args(argv)

  import cv2  # pylint: disable=import-outside-toplevel

  cv2.setNumThreads(args.threads)
  # Start our worker pool outside the timings, as OpenCV's library is loaded by now.
  ss.selective_search(np.zeros((8, 8, 3), np.uint8), mode="fast", workers=args.workers)
  load = os.getloadavg()[0]
  print(
    f"load average {load:.1f} on {os.cpu_count()} cores; ours: {args.workers} workers\n{HEADER}"
  )
  rows = (
    run_images(args.images, args.size, args.modes, args.workers, args.repeat) if args.images else []
  )
  if args.scenes:
    rows += run_scenes(args.scenes, args.modes, args.workers)
  print(f"load average {os.getloadavg()[0]:.1f}")
  result = dict(workers=args.workers, threads=args.threads, load_average=load, rows=rows)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
