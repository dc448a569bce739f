"""GoogLeNet (Inception v1) on ImageNet (Szegedy et al. 2015), torchvision's layout.

Commands:
    python -m research.main --config=experiments/googlenet_imagenet.py --workdir=DIR
    python -m research.main --config=experiments/googlenet_imagenet.py:runlocal --workdir=DIR

Paper: top-5 error 6.67% (7 nets, 144 crops); one net with one crop: 10.07%
top-5 validation error. Recipe: SGD momentum 0.9, the learning rate decreased
by 4% every 8 epochs, the two auxiliary classifiers weighted 0.3 in the loss,
crops of 8%-100% of the image area with aspect ratios 3/4-4/3, flips. The
paper gives neither the base learning rate nor the epochs: 0.01 and 90 here.
Ours, full recipe: not run here (no ImageNet on this machine).
Ours, `:runlocal` (GoogLeNet with its auxiliary heads on mnist5k digits as
3-channel 32x32 images): 84.4% test accuracy in 194 s (120 steps of batch 64,
10.0M parameters), measured on two CPU cores shared with other jobs.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (the paper's recipe on TFDS imagenet2012) or "runlocal" (offline, minutes)."""
  base.variant(arg, "googlenet_imagenet")
  c = base.base()
  c.model = "googlenet.GoogLeNet"
  c.loss = "googlenet.googlenet_loss"
  base.imagenet_sgd(
    c,
    crop="random_resized",
    batch_size=256,
    epochs=90,
    learning_rate=0.01,
    decay_every_epochs=8,
    decay_factor=0.96,
  )
  if arg == "runlocal":
    base.runlocal_digits(c, steps=120)
    c.optimizer.decay_every_steps = 30
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
