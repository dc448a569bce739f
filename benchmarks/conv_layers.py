"""Single convolution layers on the CPU: GFLOP/s of each way this project can compute them.

    python benchmarks/conv_layers.py [--batch 16] [--steps 5] [--warmup 2] [--no-torch]
    python benchmarks/conv_layers.py --weight-grad

Default: forward pass plus both gradients (input and kernel, 3x the forward FLOPs)
of the layers below, through `lax.conv_general_dilated` (XLA's own), the lax path of
research.models.layers (per-image weight gradient, research.ops.conv_grad; 1x1
kernels as a matrix product over channels, as `layers.Conv` computes them there),
oneDNN (research.ops.onednn) and torch (channels_last), all in this one process.
--weight-grad: the kernel gradient alone, XLA's against the per-image one, on the
layers where research.ops.conv_grad's thresholds were set.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.throughput import _timed  # noqa: E402
from research.ops import conv_grad, onednn  # noqa: E402

NHWC = conv_grad.NHWC
# (H = W, C in, C out, kernel, stride, padding) of layers of the classifiers.
LAYERS = [
  (56, 64, 64, 3, 1, 1),  # ResNet stage 1
  (28, 128, 128, 3, 1, 1),  # ResNet stage 2
  (14, 256, 256, 3, 1, 1),  # ResNet stage 3
  (224, 3, 64, 7, 2, 3),  # ResNet / GoogLeNet stem
  (56, 64, 256, 1, 1, 0),  # ResNet-50 bottleneck expansion
  (56, 256, 64, 1, 1, 0),  # ResNet-50 bottleneck reduction
  (224, 64, 64, 3, 1, 1),  # VGG block 1
]
WEIGHT_GRAD_LAYERS = [
  (224, 64, 64, 3, 1, 1),
  (56, 64, 64, 3, 1, 1),
  (112, 128, 128, 3, 1, 1),
  (224, 3, 64, 7, 2, 3),
  (227, 3, 64, 11, 4, 2),  # AlexNet conv1 (torchvision's 64 filters)
  (27, 64, 192, 5, 1, 2),  # AlexNet conv2
  (28, 96, 128, 3, 1, 1),  # GoogLeNet 3b
  (14, 256, 256, 3, 1, 1),
  (7, 512, 512, 3, 1, 1),
  (28, 16, 32, 5, 1, 2),  # GoogLeNet 3a 5x5
  (28, 128, 32, 3, 1, 1),  # DenseNet block 2
]


def _forward_and_grads(conv):
  """jit of (x, w) -> (y, dx, dw) with cotangent dy = y."""

  def step(x, w):
    y, vjp = jax.vjp(conv, x, w)
    return y, *vjp(y)

  return jax.jit(step)


def _pointwise(stride):
  def conv(x, w):
    return lax.dot_general(x[:, ::stride, ::stride], w[0, 0], (((3,), (0,)), ((), ())))

  return conv


def layer_rates(layer, batch, steps, warmup, use_torch):
  """{way: GFLOP/s} of forward + both gradients of one layer."""
  size, ci, co, k, s, p = layer
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, size, size, ci)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)
  pads = ((p, p), (p, p))
  out = (size + 2 * p - k) // s + 1
  flops = 3 * 2 * batch * out * out * k * k * ci * co
  ways = {
    "xla": lambda x, w: lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=NHWC),
    "lax path": (
      _pointwise(s)
      if k == 1 and p == 0
      else lambda x, w: conv_grad.conv2d(x, w, (s, s), pads, None)
    ),
  }
  if onednn.available():
    ways["onednn"] = lambda x, w: onednn.conv2d(x, w, strides=(s, s), padding=pads)
  rates = {}
  for name, conv in ways.items():
    fn = _forward_and_grads(conv)
    seconds = _timed(lambda fn=fn: jax.block_until_ready(fn(x, w)), steps, warmup)
    rates[name] = flops / seconds / 1e9
  if use_torch:
    import torch  # pylint: disable=import-outside-toplevel

    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    xt = xt.to(memory_format=torch.channels_last).requires_grad_()
    wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())
    wt = wt.to(memory_format=torch.channels_last).requires_grad_()

    def step():
      y = torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
      y.backward(y.detach())

    rates["torch"] = flops / _timed(step, steps, warmup) / 1e9
  return rates


def weight_grad_rates(layer, batch, steps, warmup):
  """{way: GFLOP/s} of the kernel gradient alone: XLA's and the per-image one."""
  size, ci, co, k, s, p = layer
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, size, size, ci)), jnp.float32)
  out = (size + 2 * p - k) // s + 1
  dy = jnp.asarray(rng.normal(size=(batch, out, out, co)), jnp.float32)
  pads = ((p, p), (p, p))
  w = jnp.zeros((k, k, ci, co), jnp.float32)
  conv = lambda w: lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=NHWC)  # noqa: E731
  ways = {
    "xla": jax.jit(lambda x, dy: jax.linear_transpose(conv, w)(dy)[0]),
    "per image": jax.jit(
      lambda x, dy: conv_grad.weight_grad_per_image(x, dy, (k, k), (s, s), pads)
    ),
  }
  flops = 2 * batch * out * out * k * k * ci * co
  return {
    name: flops / _timed(lambda fn=fn: fn(x, dy).block_until_ready(), steps, warmup) / 1e9
    for name, fn in ways.items()
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--no-torch", action="store_true", help="leave torch out")
  parser.add_argument(
    "--weight-grad", action="store_true", help="kernel gradient alone: XLA's against per image"
  )
  args = parser.parse_args(argv)
  use_torch = not args.no_torch and not args.weight_grad
  if use_torch:
    import torch  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(os.cpu_count() or 1)
  print(f"batch {args.batch}; oneDNN: {onednn.status()[1]}; GFLOP/s")
  rows = []
  for layer in WEIGHT_GRAD_LAYERS if args.weight_grad else LAYERS:
    size, ci, co, k, s, p = layer
    if args.weight_grad:
      rates = weight_grad_rates(layer, args.batch, args.steps, args.warmup)
      rates["ratio"] = rates["per image"] / rates["xla"]
    else:
      rates = layer_rates(layer, args.batch, args.steps, args.warmup, use_torch)
    name = f"{size}x{size} {ci}->{co} {k}x{k}/{s} pad {p}"
    print(
      f"{name:30} " + "  ".join(f"{key} {value:7.2f}" for key, value in rates.items()), flush=True
    )
    rows.append((layer, rates))
  return rows


if __name__ == "__main__":
  main()
