"""Supervised pre-training, domain-specific fine-tuning (Girshick et al. 2014, Sec. 2.3), in
small: a ResNet-18 at a quarter width pretrained on mnist5k, fine-tuned on scikit-learn's
8x8 `digits`, against the same network trained from scratch for the same steps.

R-CNN's claim: a network pretrained on a large auxiliary data set (ImageNet) and
fine-tuned on the small target data set (VOC) beats one trained on the target alone.
Here the auxiliary set is mnist5k (4,000 28x28 handwritten digits) and the target is
scikit-learn's digits (1,437 training images of 8x8 at 17 grey levels, another
scanner, writers and resolution; 360 test images), shown upscaled 3x and padded to the
same 32x32 frame.

Commands, from the repository root (the pretraining is resnet18_imagenet:runlocal):

    python -m research.main --config=experiments/resnet18_imagenet.py:runlocal \
        --workdir=workdirs/resnet18_mnist5k
    python -m research.main --config=experiments/finetune_digits.py \
        --workdir=workdirs/finetune_digits [--config.init.path=workdirs/resnet18_mnist5k]
    python -m research.main --config=experiments/finetune_digits.py:scratch \
        --workdir=workdirs/digits_scratch

Fine-tuning (default): every weight but the classifier's from the pretraining run's
latest checkpoint (`config.init`; `fc` is excluded and freshly initialized, a new head
as R-CNN's), the stem (conv1, bn1) frozen, the head at 10x the base learning rate
(`config.optimizer.groups`). The frozen stem's batch-norm statistics still follow the
data in training, as a PyTorch module in train mode with requires_grad False does.
`:scratch`: the same network, data, steps and schedule from a random initialization,
every parameter trained at the recipe's learning rate.

Paper: R-CNN on VOC 2007, 44.7% mAP without fine-tuning (fc7 features of the ImageNet
network) -> 54.2% fine-tuned (Table 2).
Ours (two shared CPU cores, 150 steps of batch 64 each; the pretraining: 300 steps, 95.4% on
mnist5k, 42 s): test accuracy on the 360 test digits, seeds 0/1/2, fine-tuned 98.6/97.8/98.6%
(43/31/26 s), from scratch 96.7/98.3/98.6% (41/30/26 s). Fine-tuning wins on average (98.3
against 97.9%) but within seed noise: 8x8 digits are easy to learn from 1,437 images, so the
gap is small, as R-CNN's is small where the target data are plentiful.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base

PRETRAINED = "workdirs/resnet18_mnist5k"  # resnet18_imagenet:runlocal's workdir (above)


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (fine-tune from PRETRAINED) or "scratch" (the same without pretraining)."""
  base.variant(arg, "finetune_digits", allowed=(None, "scratch"))
  c = base.base()
  c.model = "resnet.ResNet18"
  c.model_kwargs = ConfigDict({"num_filters": 16})  # resnet18_imagenet:runlocal's width
  c.dataset = "digits"
  c.input.channels = 3
  c.input.upscale = 3  # 8x8 -> 24x24, padded to 32x32: the frame of MNIST's 20x20 in 28x28
  c.input.pad = 4
  c.input.mean, c.input.std = base.MNIST_MEAN, base.MNIST_STD
  c.input.random_shift = 2
  c.batch_size = 64
  c.eval_batch_size = 120  # divides the 360 test images
  c.total_steps = 150  # 6.7 epochs of the 1,437 training images
  c.log_every_steps = 25
  c.eval_every_steps = 50
  c.checkpoint_every_steps = 75
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.05  # resnet18_imagenet:runlocal's
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 1e-4
  c.optimizer.weight_decay_on = "kernels"
  if arg is None:
    c.init.path = PRETRAINED
    c.init.exclude = (r"^fc/",)
    c.optimizer.learning_rate = 0.01  # fine-tuning: a fifth of the pretraining's rate
    c.optimizer.groups = [
      ConfigDict({"pattern": r"^(conv1|bn1)/", "frozen": True}),
      ConfigDict({"pattern": r"^fc/", "lr_multiplier": 10.0}),
    ]
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
