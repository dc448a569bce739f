"""RoI pooling (Fast R-CNN) and RoI Align (Mask R-CNN) on NHWC feature maps.

Both turn every region of interest, a box in image coordinates, into a fixed
[oh, ow, C] grid of features, the input of a detector's box or mask head.

    features [N, H, W, C], rois [R, 5] = (batch index, x1, y1, x2, y2) -> [R, oh, ow, C]

The numbers are exactly torchvision.ops.roi_pool / roi_align (tests hold them
and their gradients to 1e-4): `roi_pool` rounds the scaled box to pixels,
splits it into oh x ow bins with floor/ceil and takes each bin's max;
`roi_align` does not round, it averages bilinear samples, sampling_ratio per
bin and axis, or ceil(roi_size / output_size) of them when sampling_ratio <= 0.
As in torchvision the gradient flows to the features only; rois are treated as
constants (jax.lax.stop_gradient).

Static shapes. Under jit the work cannot depend on the values of the rois:

- roi_align gathers a fixed number of taps per bin and axis: 2 * sampling_ratio
  (two neighbours per sample) or, when sampling_ratio <= 0, a window of
  max_samples + 2 consecutive rows into which the tent weights of up to
  max_samples samples are summed (adaptive samples are at most one pixel
  apart). Slots past a roi's own sample count are masked. max_samples
  defaults to ceil(H / oh) (and ceil(W / ow)): enough for every roi inside the
  feature map.
- roi_pool takes each bin's max as 4 lookups in a 2-D sparse table, the max of
  every 2**a x 2**b window, a < L_h, b < L_w: two overlapping windows cover any
  run of up to 2**L pixels. L = ceil(log2(max_bin_size)), max_bin_size by
  default ceil((H + 1) / oh) + 1 (likewise for W): enough for every roi inside
  the map. The table holds L_h * L_w copies of the features.

A roi that needs more than the bound raises a ValueError (which roi, what to
pass) when the rois are concrete; under jit it cannot be checked, and the
samples or pixels past the bound are left out.

Speed on CPU (benchmarks/roi.py; 4 to 10x torchvision for roi_align, about 1x
to 3x for roi_pool). Each tap is its own gather, summed as it is read, so XLA
fuses them into one loop instead of materialising [R, oh, ow, taps, C]; rois
go in chunks (jax.lax.map) so that the gradient's scatter-adds stay in cache.
roi_pool's gradient goes, as torchvision's, to each bin's first maximum: only
under differentiation is a second table, of those positions, built.
roi_align supports forward and reverse mode, roi_pool reverse mode (jax.grad).
"""

from __future__ import annotations

from research.ops.roi.align import roi_align
from research.ops.roi.common import check_rois
from research.ops.roi.pool import roi_pool, roi_pool_levels

__all__ = ["roi_align", "roi_pool", "roi_pool_levels", "check_rois"]
