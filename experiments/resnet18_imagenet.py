"""ResNet-18 on ImageNet (He, Zhang, Ren & Sun 2016), torchvision's recipe.

Commands:
    python -m research.main --config=experiments/resnet18_imagenet.py --workdir=DIR
    python -m research.main --config=experiments/resnet18_imagenet.py:runlocal --workdir=DIR

Paper: ResNet-18 top-1 validation error 27.88% with 10-crop testing (Table 2);
torchvision's weights trained by this recipe: 69.76% / 89.08% top-1 / top-5
accuracy with one 224 crop. Recipe as experiments/resnet50_imagenet.py.
Ours, full recipe: not run here (no ImageNet on this machine).
Ours, `:runlocal` (ResNet-18 at 1/4 width on mnist5k digits as 3-channel 32x32
images): 95.4% test accuracy on the 1,000 held-out digits in 60 s (300 steps of
batch 64, 0.70M parameters), measured on two CPU cores shared with other jobs.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (the paper's recipe on TFDS imagenet2012) or "runlocal" (offline, minutes)."""
  base.variant(arg, "resnet18_imagenet")
  c = base.base()
  c.model = "resnet.ResNet18"
  base.torchvision_resnet_recipe(c)
  if arg == "runlocal":
    c.model_kwargs = ConfigDict({"num_filters": 16})
    base.runlocal_digits(c, steps=300)
    c.optimizer.learning_rate = 0.05
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
