"""VGG-16 on ImageNet (Simonyan & Zisserman 2015, configuration D).

Commands:
    python -m research.main --config=experiments/vgg16_imagenet.py --workdir=DIR
    python -m research.main --config=experiments/vgg16_imagenet.py:runlocal --workdir=DIR

Paper: top-5 test error 7.3% (the ILSVRC-2014 submission, an ensemble); one
VGG-16 with scale jittering, 8.8% top-5 validation error at one scale (check).
Recipe: SGD batch 256, momentum 0.9, weight decay 5e-4, dropout 0.5 in fc6 and
fc7, learning rate 0.01 divided by 10 three times when validation accuracy
stopped improving (here at epochs 30, 50 and 65 of 74), random 224 crops of
images whose shorter side is scaled to S in [256, 512], flips.
Ours, full recipe: not run here (no ImageNet on this machine).
Ours, `:runlocal` (VGG-16 with batch norm, configuration D at a quarter of its
widths, 256-wide fc layers, on mnist5k digits as 3-channel 32x32 images):
96.2% test accuracy in 153 s (400 steps of batch 64, 2.6M parameters) on two
idle CPU cores. At full width it reached 57.7% in 412 s (120 steps of batch
32, cores shared), too slow for the 3-minute budget.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base
from research.models import vgg


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (the paper's recipe on TFDS imagenet2012) or "runlocal" (offline, minutes)."""
  base.variant(arg, "vgg16_imagenet")
  c = base.base()
  c.model = "vgg.VGG16"
  base.imagenet_sgd(
    c,
    crop="scale_jitter",
    batch_size=256,
    epochs=74,
    learning_rate=0.01,
    weight_decay=5e-4,
    decay_epochs=(30, 50, 65),
  )
  c.input.scale_range = (256, 512)
  if arg == "runlocal":
    c.model = "vgg.VGG16_BN"  # from scratch in minutes, VGG-16 needs batch norm
    # Configuration D's 13 convs and 3 fc layers at a quarter of the widths: 1/16 of the
    # FLOPs, so that its depth trains in minutes on a CPU (full width: 58% in 412 s).
    quarter = tuple(v if v == "M" else v // 4 for v in vgg.CONFIGS["D"])
    c.model_kwargs = ConfigDict({"hidden": 256, "cfg": quarter})
    base.runlocal_digits(c, steps=400)
    # The paper's three step decays squeezed into 400 steps cut the rate before the net
    # has learnt (57% at 600 steps); a warm-up and cosine decay instead.
    c.optimizer.learning_rate = 0.02
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = 30
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
