"""Wide ResNet WRN-28-10 on CIFAR-10 (Zagoruyko & Komodakis 2016).

Commands:
    python -m research.main --config=experiments/wrn28_10_cifar10.py --workdir=DIR
    python -m research.main --config=experiments/wrn28_10_cifar10.py:runlocal --workdir=DIR

Paper: WRN-28-10 with dropout 0.3 between the convolutions: 3.89% test error on
CIFAR-10 with flips and 4-pixel pad-and-crop (4.00% without dropout) (check).
Recipe: SGD with Nesterov momentum 0.9, batch 128, learning rate 0.1 multiplied
by 0.2 at epochs 60, 120 and 160 of 200, weight decay 5e-4.
Ours, full recipe on TFDS `cifar10`: not run here (no download, and about 7
GPU-hours of work).
Ours, `:runlocal` (WRN-16-2, 0.69M parameters, the same block and recipe shape,
on the offline mnist5k digits repeated to 3 channels): 96.4% test accuracy in
182 s (200 steps of batch 64), measured on two CPU cores shared with other jobs.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (the paper's recipe on TFDS cifar10) or "runlocal" (offline, minutes)."""
  base.variant(arg, "wrn28_10_cifar10")
  c = base.base()
  c.model = "resnet.WideResNet"
  c.model_kwargs = ConfigDict({"depth": 28, "widen_factor": 10, "dropout_rate": 0.3})
  base.cifar10_sgd(
    c, batch_size=128, epochs=200, weight_decay=5e-4, decay_epochs=(60, 120, 160), decay_factor=0.2
  )
  if arg == "runlocal":
    c.model_kwargs = ConfigDict({"depth": 16, "widen_factor": 2, "dropout_rate": 0.0})
    base.runlocal_digits(c, steps=200)
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
