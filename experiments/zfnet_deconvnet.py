"""Deconvnet projections of the strongest units (Zeiler & Fergus 2013, Section 2.1, Fig. 2).

Commands:
    python -m research.main --config=experiments/zfnet_deconvnet.py:runlocal --workdir=DIR
    python -m research.main --config=experiments/zfnet_deconvnet.py --workdir=DIR

Paper: per feature map of layers 1-5, the top 9 activations over the
validation set, each projected down to pixels with the deconvnet, next to the
image patches that caused them; lower layers respond to edges and colours,
higher ones to object parts (Fig. 2).

Here the ZFNet-style network of `_interpret.zfnet_on_scenes` is trained on
`digit_scenes/single`; for 8 feature maps of each of relu1-relu5 (the 8 with
the largest activations) the top 9 units over 500 held-out scenes are projected,
figures/deconvnet.png. Result `deconvnet_inside_energy`: the smallest, over
all 360 projections, fraction of a projection's energy (sum of squares) that
falls inside the unit's receptive field, computed from the layers' strides
and paddings (research.interpret.receptive_field), independently of the
projection: must be 1.0 up to float error.

Ours, `:runlocal` (900 steps, 91.2% test accuracy): deconvnet_inside_energy
0.9999998 over 360 projections; 166 s on two idle CPU cores (13 s of it the
mining and projections).
"""

from __future__ import annotations

import os
import time

import numpy as np
from ml_collections import ConfigDict

from experiments import _classification as base
from experiments import _interpret
from research.interpret import deconvnet, figures


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (longer training) or "runlocal" (minutes on a CPU)."""
  base.variant(arg, "zfnet_deconvnet")
  c = _interpret.zfnet_on_scenes(
    "experiments.zfnet_deconvnet.analyze", steps=900 if arg == "runlocal" else 3600
  )
  c.deconvnet = ConfigDict({"layers": ("relu1", "relu2", "relu3", "relu4", "relu5")})
  c.deconvnet.maps = 8
  c.deconvnet.top = 9
  return c


def analyze(model, variables, config, workdir, transform) -> dict:
  """Mines and projects the top units of each layer; returns deconvnet_inside_energy."""
  start = time.time()
  images = _interpret.held_out_scenes(config, transform, config.analysis_images)["images"]
  d = config.deconvnet
  tops = {}
  for layer in d.layers:
    values, _ = deconvnet.strongest_units(model, variables, images, layer=layer)
    # The maps with the strongest units: dead maps would project to nothing.
    channels = np.argsort(-np.asarray(values).max(axis=0), kind="stable")[: d.maps]
    tops[layer] = deconvnet.top_activations(
      model, variables, images, layer=layer, channels=channels, k=d.top
    )
  figures.top_activations_grid(tops, os.path.join(workdir, "figures", "deconvnet.png"))
  inside = np.concatenate([t["inside_energy"].reshape(-1) for t in tops.values()])
  return {
    "deconvnet_inside_energy": float(inside.min()),
    "deconvnet_projections": int(inside.size),
    "deconvnet_seconds": time.time() - start,
  }


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
