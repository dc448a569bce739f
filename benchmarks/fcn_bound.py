"""How much mean IU can an FCN of output stride s reach on a data set's labels at all?

    python benchmarks/fcn_bound.py [--strides 32 16 8] [--scenes 100] [--steps 800] \
        [--learnable] [--json rows.json]

FCN's last layer upsamples a stride-s score map by a fixed bilinear transposed convolution
(kernel 2s, stride s, then the reference's crop): whatever the network computes, its
prediction is the arg-max of a bilinear interpolation of C numbers per s x s cell. This
script removes the network: for each of the first `--scenes` test scenes of
digit_scenes/multi it fits a free score map [h, w, C] (every cell's C scores are
parameters, started at the log of the class prior) through that upsampling to the scene's
labels by Adam on the per-pixel cross-entropy, then measures the paper's four numbers of the
arg-max. The mean IU reached is what a perfect network of that stride would get (up to the
fit's convergence: the cross-entropy, not IU, is minimised), an upper bound for FCN-32s,
-16s and -8s on these labels. `--learnable` also fits one upsampling kernel [2s, 2s, C, C]
shared by all scenes (FCN's learnable upsampling).

On digit_scenes/multi (labels: the digits' ink, strokes 2 to 4 pixels wide; 97.8% of the
pixels background) the fixed-upsampling bound at stride 8 is 0.49 (100 scenes, 400 steps),
at stride 4 0.82 and at stride 2 0.995 (50 scenes, 400 steps), and a learned upsampling
lifts stride 8 to 0.95 (50 scenes, 400 steps; benchmarks/results/2026-12-07_cpu/
fcn_bound.json, two idle cores): the 0.75 asked of FCN-8s there is out of reach of the
reference's FCN-8s, whose upsampling is fixed, whatever its training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data import segmentation
from research.evaluate.segmentation import segmentation_metrics
from research.models.fcn import conv_transpose
from research.ops.kernels import bilinear_upsampling


def fit(labels: np.ndarray, num_classes: int, stride: int, *, steps: int, learnable: bool):
  """labels int [N, H, W] -> (the fitted arg-max [N, H, W], metrics, final cross-entropy)."""
  n, height, width = labels.shape
  k = 2 * stride
  offset = 4 * stride - 1  # the reference's crop of its last upsampling (31 for FCN-8s)
  cells = [-(-(size + offset - k) // stride) + 1 for size in (height, width)]
  prior = np.bincount(labels.ravel(), minlength=num_classes) / labels.size
  bilinear = jnp.einsum("hw,io->hwio", bilinear_upsampling(stride), jnp.eye(num_classes))
  params = {
    "scores": jnp.broadcast_to(jnp.log(jnp.asarray(prior) + 1e-6), (n, *cells, num_classes)),
    "kernel": bilinear,
  }

  def logits(p):
    kernel = p["kernel"] if learnable else bilinear
    up = conv_transpose(p["scores"], kernel, stride)
    return up[:, offset : offset + height, offset : offset + width]

  def loss(p, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits(p), y).mean()

  optimizer = optax.adam(0.1)

  @jax.jit
  def step(p, state, y):  # the labels an argument: a closed-over constant is folded slowly
    value, grads = jax.value_and_grad(loss)(p, y)
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(p, updates), state, value

  state = optimizer.init(params)
  value = float("nan")
  targets = jnp.asarray(labels)
  for _ in range(steps):
    params, state, value = step(params, state, targets)
  prediction = np.asarray(jax.jit(logits)(params).argmax(-1))
  return prediction, segmentation_metrics(prediction, labels, num_classes), float(value)


def run(strides, scenes: int, steps: int, learnable: bool) -> list[dict]:
  source = segmentation.segmentation_source("digit_scenes/multi", "test")
  labels = np.stack([source[i]["labels"] for i in range(scenes)]).astype(np.int32)
  num_classes = source.num_classes
  rows = []
  for stride in strides:
    start = time.perf_counter()
    _, metrics, value = fit(labels, num_classes, stride, steps=steps, learnable=learnable)
    rows.append(
      {
        "stride": stride,
        "learnable_upsampling": learnable,
        "scenes": scenes,
        "steps": steps,
        "cross_entropy": value,
        **{k: float(v) for k, v in metrics.items()},
        "seconds": time.perf_counter() - start,
      }
    )
    print(
      f"stride {stride:2d} ({'learnable' if learnable else 'fixed'} upsampling): mean IU "
      f"{rows[-1]['mean_iu']:.3f}, pixel accuracy {rows[-1]['pixel_accuracy']:.4f} "
      f"({rows[-1]['seconds']:.0f} s)",
      flush=True,
    )
  return rows


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--strides", type=int, nargs="+", default=[32, 16, 8])
  parser.add_argument("--scenes", type=int, default=100, help="test scenes fitted")
  parser.add_argument("--steps", type=int, default=800, help="Adam steps of the fit")
  parser.add_argument("--learnable", action="store_true", help="fit the upsampling kernel too")
  parser.add_argument("--json", default=None, help="write the rows here")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  for name in ("scenes", "steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}: expected a count >= 1; received {getattr(args, name)}.")
  if any(s < 1 for s in args.strides):
    parser.error(f"--strides: expected integers >= 1; received {args.strides}.")
  rows = run(args.strides, args.scenes, args.steps, args.learnable)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
