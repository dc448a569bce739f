"""Selective search's hierarchical grouping (Uijlings et al. 2013, Algorithm 1) and similarities.

Greedy: merge the most similar pair of neighbouring regions into one, give it
the union of their neighbours, compute its similarity to each of them, and
repeat until one region is left. The paper's similarity is a sum of up to four
measures, each in [0, 1]:

  C  colour:  sum_k min(c_i^k, c_j^k), L1-normalized 25-bin histograms per channel
  T  texture: the same over 10-bin histograms of 8 oriented derivatives per channel
  S  size:    1 - (|r_i| + |r_j|) / |im|, so small regions merge first
  F  fill:    1 - (|BB_ij| - |r_i| - |r_j|) / |im|, so regions that fill each other's gaps merge

A merged region's histograms are the size-weighted average of its parts'.
Similarities of a pair never change while both regions live, so a heap with
lazy deletion finds the best pair exactly: entries of merged-away regions are
skipped when they surface. Only the new region's similarities to its
neighbours are computed per merge, in one vectorized call.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np

from research.detection.selective_search.features import Regions

MEASURES = "CTSF"


def intersection(hist_a: np.ndarray, hist_b: np.ndarray) -> np.ndarray:
  """Histogram intersection: [..., D], [..., D] -> [...] sum of elementwise minima."""
  return np.minimum(hist_a, hist_b).sum(-1)


def size_similarity(size_a, size_b, image_size: float):
  """[...] region sizes in pixels -> [...] 1 - (size_a + size_b) / image_size."""
  return 1.0 - (np.asarray(size_a) + size_b) / image_size


def fill_similarity(box_a, box_b, size_a, size_b, image_size: float):
  """box_a, box_b: [..., 4] (x1, y1, x2, y2); sizes [...] -> [...] fill similarity.

  1 - (|BB| - size_a - size_b) / image_size with BB the tight box around both
  regions: the fraction of the image the merged box would add beyond them.
  """
  box_a, box_b = np.asarray(box_a), np.asarray(box_b)
  width = np.maximum(box_a[..., 2], box_b[..., 2]) - np.minimum(box_a[..., 0], box_b[..., 0])
  height = np.maximum(box_a[..., 3], box_b[..., 3]) - np.minimum(box_a[..., 1], box_b[..., 1])
  return 1.0 - (width * height - np.asarray(size_a) - size_b) / image_size


def check_measures(measures: str) -> str:
  """A similarity set as a string of distinct letters of "CTSF"; ValueError otherwise."""
  if (
    not isinstance(measures, str)
    or not measures
    or set(measures) - set(MEASURES)
    or len(set(measures)) != len(measures)
  ):
    raise ValueError(
      f"measures must be distinct letters of {MEASURES!r} (colour, texture, size, fill), "
      f"e.g. 'CTSF' or 'TSF', got {measures!r}"
    )
  return measures


class Hierarchy(NamedTuple):
  """One grouping's regions in the order they were created.

  boxes: int64 [2n-1, 4] (x1, y1, x2, y2); rows 0..n-1 are the initial regions,
  row n + m the region the m-th merge made (the last row: the whole image
  when the neighbour graph is connected). children: int64 [n-1, 2] the two
  regions (row indices) each merge joined. similarity: float64 [n-1] their
  similarity.
  """

  boxes: np.ndarray
  children: np.ndarray
  similarity: np.ndarray


def group(regions: Regions, measures: str) -> Hierarchy:
  """Greedy hierarchical grouping of `regions` under the similarity set `measures` ("CTSF" etc.)."""
  check_measures(measures)
  n = len(regions.sizes)
  cap = 2 * n - 1
  size = np.empty(cap)
  size[:n] = regions.sizes
  box = np.empty((cap, 4), np.int64)
  box[:n] = regions.boxes
  image_size = float(regions.image_size)
  hists = []
  for letter, initial in (("C", regions.colour), ("T", regions.texture)):
    if letter in measures:
      h = np.empty((cap, initial.shape[1]))
      h[:n] = initial
      hists.append(h)
  use_size, use_fill = "S" in measures, "F" in measures

  def similarity(a, b):
    """a: int or int array, b: int array -> float64 [len(b)]."""
    s = np.zeros(len(b))
    for h in hists:
      s += intersection(h[a], h[b])
    if use_size:
      s += size_similarity(size[a], size[b], image_size)
    if use_fill:
      s += fill_similarity(box[a], box[b], size[a], size[b], image_size)
    return s

  pairs = regions.pairs
  neighbours: list[set | None] = [set() for _ in range(cap)]
  for a, b in pairs.tolist():
    neighbours[a].add(b)
    neighbours[b].add(a)
  # (-similarity, a, b): heapq pops the smallest, ties go to the older regions.
  heap = list(zip((-similarity(pairs[:, 0], pairs[:, 1])).tolist(), *pairs.T.tolist()))
  heapq.heapify(heap)
  alive = bytearray(cap)
  alive[:n] = b"\x01" * n
  children = np.zeros((max(n - 1, 0), 2), np.int64)
  merged_similarity = np.zeros(max(n - 1, 0))
  t = n
  while heap:
    negative, a, b = heapq.heappop(heap)
    if not (alive[a] and alive[b]):
      continue
    alive[a] = alive[b] = 0
    alive[t] = 1
    children[t - n] = a, b
    merged_similarity[t - n] = -negative
    size_a, size_b = size[a], size[b]
    size[t] = size_a + size_b
    box[t, :2] = np.minimum(box[a, :2], box[b, :2])
    box[t, 2:] = np.maximum(box[a, 2:], box[b, 2:])
    for h in hists:
      h[t] = (size_a * h[a] + size_b * h[b]) / size[t]
    union = neighbours[a] | neighbours[b]
    union.discard(a)
    union.discard(b)
    for m in union:
      around = neighbours[m]
      around.discard(a)
      around.discard(b)
      around.add(t)
    neighbours[t], neighbours[a], neighbours[b] = union, None, None
    if union:
      others = list(union)
      for s, m in zip((-similarity(t, np.array(others))).tolist(), others):
        heapq.heappush(heap, (s, m, t))
    t += 1
  # A disconnected neighbour graph (never from a segmentation of one image) stops early.
  return Hierarchy(box[:t], children[: t - n], merged_similarity[: t - n])
