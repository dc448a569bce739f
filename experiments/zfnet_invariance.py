"""Feature invariance (Zeiler & Fergus 2013, Section 4.1, Fig. 5).

Commands:
    python -m research.main --config=experiments/zfnet_invariance.py:runlocal --workdir=DIR
    python -m research.main --config=experiments/zfnet_invariance.py --workdir=DIR

Paper: for five images translated vertically, scaled and rotated, the
Euclidean distance between the feature vectors of the original and the
transformed image, in layer 1 and layer 7, and the probability of the true
class: small transformations change layer 1 a lot and the top layers much
less; the output is stable to translation and scaling, less to rotation.

Here the ZFNet-style network of `_interpret.zfnet_on_scenes` is trained on
`digit_scenes/single`, and five held-out scenes are shifted vertically
(-12..12 px), scaled about their centre (0.7..1.3) and rotated (-60..60
degrees). The distance of each layer is relative (||f(T x) - f(x)|| /
||f(x)||) so that layers of different sizes compare. Results
`invariance_ratio_<transform>`: mean relative distance in layer 1 (relu1)
divided by that in layer 7 (relu7), over images and amounts; above 1 means
the top layer changed less, as the paper says. figures/invariance.png has the
curves of relu1, relu3, relu5, relu7 and the true-class probability.

Ours, `:runlocal` (900 steps, 91.2% test accuracy): invariance_ratio
translation 2.94, scale 1.60, rotation 1.10 (the top layer changes much less
than layer 1 under translation and scaling, barely less under rotation, as
in the paper); the smallest
mean true-class probability 0.80 under translation, 0.63 under scaling, 0.01
at 60 degrees of rotation; 162 s on two idle CPU cores.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from ml_collections import ConfigDict
from scipy import ndimage

from experiments import _classification as base
from experiments import _interpret
from research.interpret import figures

TRANSFORMS = {
  "translation": np.arange(-12, 13, 3).astype(float),  # pixels, vertical
  "scale": np.round(np.arange(0.7, 1.31, 0.075), 3),  # factor about the centre
  "rotation": np.arange(-60, 61, 15).astype(float),  # degrees
}


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (longer training) or "runlocal" (minutes on a CPU)."""
  base.variant(arg, "zfnet_invariance")
  c = _interpret.zfnet_on_scenes(
    "experiments.zfnet_invariance.analyze", steps=900 if arg == "runlocal" else 3600
  )
  c.invariance = ConfigDict({"images": 5, "layers": ("relu1", "relu3", "relu5", "relu7")})
  return c


def transformed(image: np.ndarray, kind: str, amount: float) -> np.ndarray:
  """image [H, W, C] uint8 translated / scaled / rotated about its centre, zeros outside."""
  x = image[..., 0].astype(np.float32)
  if kind == "translation":
    y = ndimage.shift(x, (amount, 0), order=1, mode="constant")
  elif kind == "rotation":
    y = ndimage.rotate(x, amount, reshape=False, order=1, mode="constant")
  elif kind == "scale":
    centre = (np.asarray(x.shape) - 1) / 2
    # output pixel p samples input centre + (p - centre) / amount
    y = ndimage.affine_transform(
      x, np.eye(2) / amount, offset=centre - centre / amount, order=1, mode="constant"
    )
  else:
    raise ValueError(f"kind: expected one of {sorted(TRANSFORMS)}, got {kind!r}.")
  return np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None]


def analyze(model, variables, config, workdir, transform) -> dict:
  """Distances between features of scenes and their transforms, layer by layer."""
  start = time.time()
  inv = config.invariance
  scenes = _interpret.held_out_scenes(config, transform, inv.images)
  apply = jax.jit(lambda x: model.apply(variables, x))

  def features(raw, labels):
    logits, out = apply(transform({"image": raw, "label": labels})["image"])
    probs = np.asarray(jax.nn.softmax(logits))[np.arange(len(labels)), labels]
    return {k: np.asarray(out[k]).reshape(len(raw), -1) for k in inv.layers}, probs

  labels = scenes["labels"]
  clean, _ = features(scenes["raw_images"], labels)
  curves, results = {}, {}
  for kind, amounts in TRANSFORMS.items():
    distances = {k: [] for k in inv.layers}
    probability = []
    for amount in amounts:
      raw = np.stack([transformed(im, kind, amount) for im in scenes["raw_images"]])
      feats, probs = features(raw, labels)
      for k in inv.layers:
        rel = np.linalg.norm(feats[k] - clean[k], axis=1) / np.linalg.norm(clean[k], axis=1)
        distances[k].append(rel.mean())
      probability.append(probs.mean())
    curves[kind] = {
      "amounts": amounts,
      "distances": {k: np.asarray(v) for k, v in distances.items()},
      "probability": np.asarray(probability),
    }
    first, top = inv.layers[0], inv.layers[-1]
    moved = amounts != (1.0 if kind == "scale" else 0.0)  # the identity changes nothing
    ratio = np.mean(np.asarray(distances[first])[moved]) / np.mean(
      np.asarray(distances[top])[moved]
    )
    results[f"invariance_ratio_{kind}"] = float(ratio)
    results[f"invariance_min_probability_{kind}"] = float(np.min(probability))
  figures.invariance_curves(curves, os.path.join(workdir, "figures", "invariance.png"))
  results["invariance_seconds"] = time.time() - start
  return results


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
