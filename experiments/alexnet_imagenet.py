"""AlexNet on ImageNet (Krizhevsky, Sutskever & Hinton 2012), in torchvision's layout.

Commands:
    python -m research.main --config=experiments/alexnet_imagenet.py --workdir=DIR
    python -m research.main --config=experiments/alexnet_imagenet.py:runlocal --workdir=DIR

Paper: top-5 test error 16.4% with 5 nets, 18.2% top-5 validation error for
one net (top-1 40.7%). Recipe: SGD batch 128, momentum 0.9, weight decay 5e-4,
learning rate 0.01 divided by 10 whenever the validation error stopped improving
(three times in about 90 epochs; here at epochs 30, 60 and 80), dropout 0.5 in
the first two fully connected layers, random 224 crops and flips of images whose
shorter side is resized to 256 (the paper crops within the central 256x256
patch only), and PCA colour augmentation (alpha std 0.1).
Ours, full recipe: not run here (no ImageNet on this machine).
Ours, `:runlocal` (AlexNet with 256-wide fc layers on mnist5k digits as
3-channel 64x64 images): 87.5% test accuracy in 184 s (300 steps of batch 64,
4.9M parameters), measured on two CPU cores shared with other jobs.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (the paper's recipe on TFDS imagenet2012) or "runlocal" (offline, minutes)."""
  base.variant(arg, "alexnet_imagenet")
  c = base.base()
  c.model = "alexnet.AlexNet"
  base.imagenet_sgd(
    c,
    crop="scale_jitter",
    batch_size=128,
    epochs=90,
    learning_rate=0.01,
    weight_decay=5e-4,
    decay_epochs=(30, 60, 80),
  )
  c.input.scale_range = (256, 256)
  c.input.pca_lighting = 0.1
  if arg == "runlocal":
    c.model_kwargs = ConfigDict({"hidden": 256})
    base.runlocal_digits(c, upscale=2, steps=300)
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
