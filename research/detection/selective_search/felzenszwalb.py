"""Felzenszwalb-Huttenlocher segmentation for several thresholds k over one sorted graph.

    graph = Graph.of(channels)                  # smoothing, 8-connected edges, sorted once
    labels = [graph.segment(k, min_size) for k in (50, 100)]

The same segmentation as scikit-image's `felzenszwalb` (a port of the
authors' C++ code; equal labels, `tests/detection/test_selective_search.py`),
split in two so that selective search's several k per colour space share the
costly half. scikit-image smooths the image, builds the 8-connected graph and
sorts its ~4 H W edges on every call; here that is done once per colour
space (`Graph.of`), and each k only runs the union-find pass over the sorted
edges, compiled with numba (`_merge`). At 500 x 500 the sort is about three
quarters of scikit-image's time per call.

The pass (Felzenszwalb & Huttenlocher 2004, Algorithm 1): edges in order of
increasing weight w; an edge joins its two components when w is below both
components' internal difference plus k / size (the threshold function
tau = k / |C|); a second pass joins every component smaller than min_size to
its neighbour across the lightest edge. Weights are the Euclidean distance of
the smoothed channels, and k is divided by 255 as scikit-image does for
[0, 1] images, so k means what it means on 8-bit images in the paper.
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
from scipy import ndimage

SIGMA = 0.8


@numba.njit(cache=True, nogil=True)
def _find(parent, i):
  """The root of i's tree (the smallest pixel index in it), halving the path on the way."""
  while parent[i] != i:
    parent[i] = parent[parent[i]]
    i = parent[i]
  return i


@numba.njit(cache=True, nogil=True)
def _merge(edges, costs, n, scale, min_size):
  """edges int64 [E, 2] and costs float64 [E] sorted by cost -> int64 [n] root of each pixel.

  Roots are each component's smallest pixel index, as scikit-image's union-find
  keeps them. Internal differences and thresholds are compared in float32,
  as scikit-image's loop declares them.
  """
  parent = np.arange(n)
  size = np.ones(n, np.int64)
  internal = np.zeros(n)
  for e in range(len(costs)):
    a = _find(parent, edges[e, 0])
    b = _find(parent, edges[e, 1])
    if a == b:
      continue
    tau_a = np.float32(internal[a] + scale / size[a])
    tau_b = np.float32(internal[b] + scale / size[b])
    if costs[e] < min(tau_a, tau_b):
      root, child = min(a, b), max(a, b)
      parent[child] = root
      size[root] = size[a] + size[b]
      internal[root] = costs[e]
  for e in range(len(costs)):
    a = _find(parent, edges[e, 0])
    b = _find(parent, edges[e, 1])
    if a != b and (size[a] < min_size or size[b] < min_size):
      root, child = min(a, b), max(a, b)
      parent[child] = root
      size[root] = size[a] + size[b]
  for i in range(n):
    parent[i] = _find(parent, i)
  return parent


@dataclasses.dataclass(frozen=True)
class Graph:
  """The 8-connected pixel graph of one image, edges sorted by weight.

  edges: int64 [E, 2] pixel indices (row-major); costs: float64 [E], sorted
  ascending; shape: (H, W). E = 4 H W - 3 (H + W) + 2.
  """

  edges: np.ndarray
  costs: np.ndarray
  shape: tuple[int, int]

  @classmethod
  def of(cls, channels: np.ndarray, sigma: float = SIGMA) -> Graph:
    """channels: float [H, W, C] in [0, 1] -> the sorted graph of the smoothed image."""
    image = ndimage.gaussian_filter(np.asarray(channels, np.float64), sigma=(sigma, sigma, 0))
    h, w = image.shape[:2]
    index = np.arange(h * w).reshape(h, w)
    # The four directions in scikit-image's order (its argsort is not stable, so the
    # order of equal weights, and with it the segmentation, depends on this order).
    pairs = (
      ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
      ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
      ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
      ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))),
    )
    costs, edges = [], []
    for one, other in pairs:
      difference = image[one] - image[other]
      costs.append(np.sqrt(np.sum(difference * difference, axis=-1)).ravel())
      edges.append(np.stack([index[one].ravel(), index[other].ravel()], 1))
    costs, edges = np.concatenate(costs), np.concatenate(edges)
    order = np.argsort(costs)
    return cls(np.ascontiguousarray(edges[order]), np.ascontiguousarray(costs[order]), (h, w))

  def segment(self, k: float, min_size: int) -> np.ndarray:
    """-> int64 labels [H, W], 0..n-1 numbered in the order of each region's first pixel."""
    h, w = self.shape
    roots = _merge(self.edges, self.costs, h * w, float(k) / 255.0, int(min_size))
    # Each root is its region's first pixel: number the roots in pixel order.
    is_root = roots == np.arange(h * w)
    number = np.cumsum(is_root) - 1
    return number[roots].reshape(h, w)
