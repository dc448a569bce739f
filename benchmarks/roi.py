"""roi_align and roi_pool against torchvision.ops on CPU, forward and forward+backward.

    python benchmarks/roi.py [--rois 512] [--channels 256] [--size 50] [--images 1]
        [--output 7] [--sampling-ratio 2] [--repeat 10] [--warmup 2] [--json out.json]

Both libraries run in this one process on the same features (NCHW for torch,
the same numbers as NHWC for JAX) and the same rois: proposals on an image of
16 * size pixels seen at spatial_scale 1/16, sides log-uniform from 16 pixels
to the whole image, clipped to it. Forward+backward is the gradient of
sum(out * cotangent) w.r.t. the features, forward included in both (torch's
autograd runs it, and the JAX step is jit(value_and_grad)). Printed per op:
median milliseconds per call of each and the ratio torchvision / ours (> 1:
ours is faster). Needs jax, torch and torchvision.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research.ops import roi  # noqa: E402


def _timed(fn, repeat: int, warmup: int) -> float:
  """Median milliseconds per call of `fn` (which blocks until done), after `warmup` calls.

  The median, not the mean: on a shared machine a few calls land on a busy core.
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeat):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def make_rois(rng, num_rois: int, num_images: int, image_size: float) -> np.ndarray:
  """[R, 5] (batch index, x1, y1, x2, y2) proposals inside an image_size square."""
  sides = np.exp(rng.uniform(np.log(16.0), np.log(image_size), size=(num_rois, 2)))
  corner = rng.uniform(0.0, image_size - 16.0, size=(num_rois, 2))
  far = np.minimum(corner + sides, image_size)
  index = rng.integers(0, num_images, size=(num_rois, 1))
  return np.concatenate([index, corner, far], axis=1).astype(np.float32)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rois", type=int, default=512)
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--size", type=int, default=50, help="feature map side H = W")
  parser.add_argument("--images", type=int, default=1)
  parser.add_argument("--output", type=int, default=7)
  parser.add_argument("--sampling-ratio", type=int, default=2)
  parser.add_argument("--repeat", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args(argv)

  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  scale = 1.0 / 16
  shape = (args.images, args.size, args.size, args.channels)
  features = rng.normal(size=shape).astype(np.float32)
  rois = make_rois(rng, args.rois, args.images, args.size / scale)
  out = args.output
  cotangent = rng.normal(size=(args.rois, out, out, args.channels)).astype(np.float32)

  x_torch = torch.from_numpy(features.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  rois_torch = torch.from_numpy(rois)
  cot_torch = torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy())
  x_jax, rois_jax, cot_jax = jnp.asarray(features), jnp.asarray(rois), jnp.asarray(cotangent)

  ops = {
    "roi_align": (
      lambda x: torchvision.ops.roi_align(x, rois_torch, out, scale, args.sampling_ratio, False),
      functools.partial(
        roi.roi_align, output_size=out, spatial_scale=scale, sampling_ratio=args.sampling_ratio
      ),
    ),
    "roi_pool": (
      lambda x: torchvision.ops.roi_pool(x, rois_torch, out, scale),
      functools.partial(roi.roi_pool, output_size=out, spatial_scale=scale),
    ),
  }
  print(
    f"{args.rois} rois on {args.images} x {args.size}x{args.size}x{args.channels} features, "
    f"{out}x{out} output, sampling_ratio {args.sampling_ratio}; torch threads "
    f"{torch.get_num_threads()}, jax {jax.__version__} on {jax.devices()[0].platform}"
  )
  print(f"{'op':<28}{'torchvision ms':>16}{'ours ms':>12}{'ratio':>8}")
  results = {}
  for name, (torch_fn, jax_fn) in ops.items():
    forward = jax.jit(jax_fn)
    step = jax.jit(jax.value_and_grad(lambda x, r, fn=jax_fn: (fn(x, r) * cot_jax).sum()))

    def torch_step(fn=torch_fn):
      x_torch.grad = None
      fn(x_torch).backward(cot_torch)

    with torch.no_grad():
      torch_forward_ms = _timed(lambda fn=torch_fn: fn(x_torch), args.repeat, args.warmup)
    timings = {
      "forward": (
        torch_forward_ms,
        _timed(lambda f=forward: f(x_jax, rois_jax).block_until_ready(), args.repeat, args.warmup),
      ),
      "forward+backward": (
        _timed(torch_step, args.repeat, args.warmup),
        _timed(lambda f=step: jax.block_until_ready(f(x_jax, rois_jax)), args.repeat, args.warmup),
      ),
    }
    for kind, (torch_ms, ours_ms) in timings.items():
      label = f"{name} {kind}"
      print(f"{label:<28}{torch_ms:>16.1f}{ours_ms:>12.1f}{torch_ms / ours_ms:>7.2f}x")
      results[label] = {"torchvision_ms": torch_ms, "ours_ms": ours_ms}
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "results": results}, f, indent=2)
  return results


if __name__ == "__main__":
  main()
