"""Class models and image-specific saliency (Simonyan, Vedaldi & Zisserman 2013, Figs. 1-2).

Commands:
    python -m research.main --config=experiments/class_model_visualization.py:runlocal --workdir=DIR
    python -m research.main --config=experiments/class_model_visualization.py --workdir=DIR

Paper: the image maximizing the unnormalized class score S_c(I) - lambda
||I||^2, found by back-propagation from the zero image, shows the class's
notion (Fig. 1); the map max_channels |dS_c/dI| at an image shows where the
object is (Fig. 2), enough for weakly supervised localization (ILSVRC-2013
top-5 localization error 46.4%).

Here the ZFNet-style network of `_interpret.zfnet_on_scenes` is trained on
`digit_scenes/single`. Results:
- `class_model_confidence`: the smallest, over the 10 classes, softmax
  probability the model gives its own class model. Target >= 0.99.
- `pointing_game`: the fraction of 500 held-out scenes whose saliency maximum
  lies in the digit's box. Target >= 0.90.
- `pointing_game_tolerance`: the same with Zhang et al.'s (2016) tolerance, a
  maximum within 4 px of the box (their 15 px at 224 px, scaled to 64 px).
- `saliency_box_iou50`: the fraction whose box from the thresholded saliency
  (research.interpret.saliency.saliency_box) has IoU >= 0.5 with the digit's box.
figures/class_models.png and figures/saliency.png.

Ours, `:runlocal` (900 steps, Gaussian noise on half the training images,
90.9% test accuracy): class_model_confidence 1.000 (0.99987; 300 steps of rate
1.0, lambda 0.01); pointing_game 0.854 (target 0.90 not met; 0.712 when
trained without the noise), 0.982 with the 4 px tolerance; saliency_box_iou50
0.320 (mean IoU 0.41); 217-234 s on two idle CPU cores.

Ours, the default variant (3600 steps, the same recipe otherwise; 2026-11-27):
94.8% test accuracy, class_model_confidence 1.000, pointing_game 0.878 (not
met), 0.984 with the tolerance, saliency_box_iou50 0.348; 949 s.

Where the misses are (the same run, 2026-11-27): 57 of the 73 maxima outside the
box lie within 2 px of it, on the dark side of a stroke at the digit's edge. The
same maps smoothed by a Gaussian before the argmax reach 0.87 (sigma 2 px) and
0.92 (3 px), and |gradient x input| reaches 0.97, but neither is the paper's
map, so `pointing_game` stays the plain one. The loss-gradient penalty of
research.train.steps (`--config.input_gradient_penalty`) triples the step time
here (107 against about 330 images/s), too slow for `:runlocal`; at lambda 100
without the noise (400 steps, 278 s) it stops the model learning (16.3% test
accuracy; pointing_game 0.756), and at lambda 1 it is about 0.005, too weak.

Other recipes measured at 900 steps with the same noise (2026-11-27, busy
machine, so times are upper bounds): pointing_game 0.808 with conv1 7x7 at
stride 1 and the widths halved again (24, 64, 96, 96, 64), which keeps 3x3
maps at the top and reaches 95.2% test accuracy but takes 603 s; 0.71 with a
3x3/2 conv1 (57.8%); 0.844 with AdamW's weight decay 0.05 (90.9%); 0.818
with random ink added next to strokes (half the pixels of a 3x3 grey
dilation on half the images, 87.1%), meant to make the model indifferent to
stroke width; dropout 0.5 before fc6 and fc7 did not learn in 900 steps.
Smaller digits are the hardest: by quartile of box area, smallest first,
0.68, 0.88, 0.92, 0.94 in the landed `:runlocal` run (0.854 in all).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from experiments import _classification as base
from experiments import _interpret
from research.interpret import class_model, figures, saliency
from research.ops import boxes as box_ops


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (longer training) or "runlocal" (minutes on a CPU)."""
  base.variant(arg, "class_model_visualization")
  c = _interpret.zfnet_on_scenes(
    "experiments.class_model_visualization.analyze", steps=900 if arg == "runlocal" else 3600
  )
  # Gaussian noise (std 1 of the normalized pixels) on half the training images: to first
  # order a penalty on the input gradient (Bishop 1995), which takes the saliency off
  # pixels that carry no evidence. Measured at 900 steps: pointing_game 0.712 without,
  # 0.78 with std 0.5 on all images (accuracy 81.9%), 0.854 with std 1 on half (90.9%),
  # 0.834 on three quarters (87.3%), 0.842 with std 1.5 on half (80.3%).
  c.input.noise_std = 1.0
  c.input.noise_probability = 0.5
  c.class_model = ConfigDict({"l2": 0.01, "learning_rate": 1.0, "steps": 300})
  # tolerance: the pointing game of Zhang et al. (2016) counts a maximum within 15 px of
  # the object in 224 px images; 4 px is that share of these 64 px scenes.
  c.saliency = ConfigDict({"quantile": 0.95, "dilation": 1.0, "tolerance": 4.0, "figure_scenes": 8})
  return c


def analyze(model, variables, config, workdir, transform) -> dict:
  """Class models of every class and saliency on held-out scenes."""
  start = time.time()
  model_fn = lambda x: model.apply(variables, x)
  num_classes = model.num_classes
  cm = config.class_model
  shape = tuple(
    transform({"image": np.zeros((1, 64, 64, 1), np.uint8), "label": np.zeros(1, int)})[
      "image"
    ].shape[1:]
  )
  images = class_model.class_model(
    model_fn,
    jnp.arange(num_classes),
    image_shape=shape,
    l2=cm.l2,
    learning_rate=cm.learning_rate,
    steps=cm.steps,
  )
  probs = np.asarray(jax.nn.softmax(model_fn(images)[0]))
  own = probs[np.arange(num_classes), np.arange(num_classes)]
  figures.class_models_grid(
    np.asarray(images), np.arange(num_classes), os.path.join(workdir, "figures", "class_models.png")
  )

  scenes = _interpret.held_out_scenes(config, transform, config.analysis_images)
  maps = []
  for i in range(0, len(scenes["labels"]), 100):
    maps.append(
      np.asarray(
        saliency.saliency_batch(
          model_fn,
          jnp.asarray(scenes["images"][i : i + 100]),
          jnp.asarray(scenes["labels"][i : i + 100]),
        )
      )
    )
  maps = np.concatenate(maps)
  hits = np.asarray(saliency.pointing_game(maps, scenes["boxes"]))
  s = config.saliency
  near = np.asarray(saliency.pointing_game(maps, scenes["boxes"], tolerance=s.tolerance))
  predicted = np.stack(
    [saliency.saliency_box(m, quantile=s.quantile, dilation=s.dilation) for m in maps]
  )
  ious = np.asarray(
    [
      float(box_ops.iou(p[None], t[None])[0, 0])
      for p, t in zip(predicted, scenes["boxes"], strict=True)
    ]
  )
  k = s.figure_scenes
  figures.saliency_panels(
    scenes["raw_images"][:k],
    maps[:k],
    os.path.join(workdir, "figures", "saliency.png"),
    true_boxes=scenes["boxes"][:k],
    predicted_boxes=predicted[:k],
  )
  return {
    "class_model_confidence": float(own.min()),
    "class_model_probabilities": [float(p) for p in own],
    "pointing_game": float(hits.mean()),
    "pointing_game_tolerance": float(near.mean()),
    "saliency_box_iou50": float((ious >= 0.5).mean()),
    "saliency_mean_iou": float(ious.mean()),
    "saliency_scenes": int(len(hits)),
    "class_model_seconds": time.time() - start,
  }


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
