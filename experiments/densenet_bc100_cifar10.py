"""DenseNet-BC (L=100, k=12) on CIFAR-10 (Huang, Liu, van der Maaten & Weinberger 2017).

Commands:
    python -m research.main --config=experiments/densenet_bc100_cifar10.py --workdir=DIR
    python -m research.main --config=experiments/densenet_bc100_cifar10.py:runlocal --workdir=DIR

Paper: 4.51% test error on CIFAR-10 with standard augmentation (C10+), 0.8M
parameters. Recipe: SGD with Nesterov momentum 0.9, batch 64, learning rate 0.1
divided by 10 at 50% and 75% of 300 epochs, weight decay 1e-4, flips and
4-pixel pad-and-crop.
Ours, full recipe on TFDS `cifar10`: not run here (no download).
Ours, `:runlocal` (DenseNet-BC with 3 blocks of 4 layers, k=12, 0.10M
parameters, on the offline mnist5k digits repeated to 3 channels): 94.9% test
accuracy in 205 s (120 steps of batch 64), measured on two CPU cores shared with
other jobs; XLA's CPU convolutions are slow on DenseNet's many narrow layers.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (the paper's recipe on TFDS cifar10) or "runlocal" (offline, minutes)."""
  base.variant(arg, "densenet_bc100_cifar10")
  c = base.base()
  c.model = "densenet.DenseNetBC100"
  base.cifar10_sgd(
    c, batch_size=64, epochs=300, weight_decay=1e-4, decay_epochs=(150, 225), decay_factor=0.1
  )
  if arg == "runlocal":
    c.model = "densenet.DenseNet"
    c.model_kwargs = ConfigDict(
      {"stem": "cifar", "growth_rate": 12, "block_config": (4, 4, 4), "num_init_features": 24}
    )
    base.runlocal_digits(c, steps=120)
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
