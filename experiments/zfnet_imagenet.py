"""ZFNet on ImageNet (Zeiler & Fergus 2013, Fig. 3).

Commands:
    python -m research.main --config=experiments/zfnet_imagenet.py --workdir=DIR
    python -m research.main --config=experiments/zfnet_imagenet.py:runlocal --workdir=DIR

Paper: top-5 test error 16.5% for one net, 14.8% with 6 nets (Table 2).
Recipe: SGD batch 128, learning rate 0.01, momentum 0.9, about 70 epochs (the
rate annealed by hand; here divided by 10 at epochs 35 and 55), dropout 0.5 in
fc6 and fc7, 224 crops of 256-resized images with flips, and every conv filter
whose RMS exceeds 0.1 scaled back to 0.1 after each step.
Ours, full recipe: not run here (no ImageNet on this machine).
Ours, `:runlocal` (ZFNet with 256-wide fc layers on mnist5k digits as 3-channel
64x64 images): 77.0% test accuracy in 139 s (150 steps of batch 64, 6.2M
parameters; 300 steps gave 94.4% in 395 s), measured on two CPU cores shared
with other jobs.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (the paper's recipe on TFDS imagenet2012) or "runlocal" (offline, minutes)."""
  base.variant(arg, "zfnet_imagenet")
  c = base.base()
  c.model = "zfnet.ZFNet"
  base.imagenet_sgd(
    c, crop="scale_jitter", batch_size=128, epochs=70, learning_rate=0.01, decay_epochs=(35, 55)
  )
  c.input.scale_range = (256, 256)
  c.optimizer.max_filter_rms = 0.1
  if arg == "runlocal":
    c.model_kwargs = ConfigDict({"hidden": 256})
    base.runlocal_digits(c, upscale=2, steps=150)
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
