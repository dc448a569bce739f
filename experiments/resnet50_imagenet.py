"""ResNet-50 on ImageNet (He, Zhang, Ren & Sun 2016), torchvision's recipe.

Commands:
    python -m research.main --config=experiments/resnet50_imagenet.py --workdir=DIR
    python -m research.main --config=experiments/resnet50_imagenet.py:runlocal --workdir=DIR

Paper: ResNet-50 top-1 / top-5 validation error 22.85% / 6.71% with 10-crop
testing (Table 3); torchvision's weights trained by this recipe: 76.13% / 92.86%
accuracy with one 224 crop. Recipe: SGD momentum 0.9, batch 256, learning rate
0.1 divided by 10 at epochs 30 and 60 of 90, weight decay 1e-4, random-resized
224 crops and flips; evaluation on the centre 224 crop of the 256-resized image.
Ours, full recipe: not run here (no ImageNet on this machine).
Ours, `:runlocal` (the same Bottleneck ResNet-50 at 1/8 width, on mnist5k digits
as 3-channel 32x32 images): 79.4% test accuracy in 74 s (300 steps of batch 64,
0.38M parameters), measured on two CPU cores shared with other jobs.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (the paper's recipe on TFDS imagenet2012) or "runlocal" (offline, minutes)."""
  base.variant(arg, "resnet50_imagenet")
  c = base.base()
  c.model = "resnet.ResNet50"
  base.torchvision_resnet_recipe(c)
  if arg == "runlocal":
    c.model_kwargs = ConfigDict({"num_filters": 8})
    base.runlocal_digits(c, steps=300)
    c.optimizer.learning_rate = 0.05
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
