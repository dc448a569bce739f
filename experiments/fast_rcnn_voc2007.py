"""Fast R-CNN (Girshick 2015): the paper's VGG-16 recipe on VOC 2007 and a detector of digit
scenes on selective-search proposals, trained in minutes on a CPU.

Commands, from the repository root:

    python -m research.main --config=experiments/fast_rcnn_voc2007.py \\
        --workdir=workdirs/fast_rcnn_voc2007 --config.init.path=vgg16.pth
    # :runlocal, the pretraining first (resnet18_imagenet:runlocal on mnist5k, about a minute):
    python -m research.main --config=experiments/resnet18_imagenet.py:runlocal \\
        --workdir=workdirs/resnet18_mnist5k
    python -m research.main --config=experiments/fast_rcnn_voc2007.py:runlocal \\
        --workdir=workdirs/fast_rcnn_scenes

Default: the paper's recipe (Sections 2.3, 3.1, 4). FastRCNN_VGG16 initialized from
ImageNet VGG-16 (conv layers into backbone/body, fc6/fc7 into the box head), selective
search proposals (fast mode, 2,000 per image, computed once per split and cached beside
the data set: research.data.proposals), images with the shorter side 600 (the longer at
most 1,000), flipped; SGD momentum 0.9, weight decay 5e-4, learning rate 0.001 for 30k
mini-batches and 0.0001 for 10k, mini-batches of 2 images x 64 RoIs, 25% foreground.
Paper: 66.9% mAP on VOC 2007 test with 07 data (70.0% with 07+12). Ours: not run here (no
VOC and no GPU on this machine).

`:runlocal`: FastRCNN_ResNet18_FPN_Scenes on digit_scenes/multi, with Faster R-CNN
:runlocal's backbone (initialized from the mnist5k classifier of resnet18_imagenet:runlocal),
box head and schedule, on selective-search proposals (fast mode, the best 500 of about 200
per scene); the lineage table compares the two (benchmarks/lineage.py).
Target: VOC-style mAP@0.5 >= 0.85 on the 500 test scenes, in at most 10 minutes on two
CPU cores including the pretraining and the proposals.
Ours (seed 0, one run on two idle cores, 2026-12-06): VOC07 mAP@0.5 0.871 (target 0.85),
VOC area mAP 0.917, COCO AP 0.563, AP50 0.913, AP75 0.659, AR100 0.648: below Faster R-CNN
:runlocal's 0.902 / 0.653 with the same backbone, head and steps, as the papers order them.
Time: the detector's run 183 s (52 img/s in training; 228 s before RoI pooling took each
RoI from its own level in one lookup, with the same numbers to the last digit), the
proposals of the 4,000 + 500 scenes 107 + 15 s with 2 processes, the pretraining 37 s: 5.7
minutes of the 10 allowed.
Truncated SVD of the trained head (`fast_rcnn.with_svd`, fc6 rank 64, fc7 rank 32):
mAP@0.5 0.875, COCO AP 0.537, network 14.7 against 17.6 ms per scene; at the papers' sizes
(VGG-16, ranks 1024/256, random weights) 2.60 against 4.06 s per image
(`python benchmarks/lineage.py --paper-scale 2000`, README).
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _classification as base
from experiments import faster_rcnn_voc2007 as faster


def proposals(max_proposals: int = 2000, workers: int = 1) -> ConfigDict:
  """Selective search, fast mode (R-CNN's and Fast R-CNN's), the best `max_proposals`."""
  return ConfigDict(
    {
      "method": "selective_search",
      "mode": "fast",
      "max_proposals": max_proposals,
      "workers": workers,
      "cache_dir": "",
    }
  )


def get_config(arg: str | None = None) -> ConfigDict:
  """`arg`: None (VGG-16 on VOC 2007) or "runlocal" (digit scenes)."""
  base.variant(arg, "fast_rcnn_voc2007", allowed=(None, "runlocal"))
  if arg is None:
    c = faster.get_config(None)
    c.model = "fast_rcnn.FastRCNN_VGG16"
    c.proposals = proposals(2000)
    c.batch_size = 2  # 2 images x 64 RoIs (Section 2.3)
    c.total_steps = 40_000
    c.optimizer.boundaries = (0.75,)  # 30k of 40k
    return c
  c = faster.get_config("runlocal")
  c.model = "fast_rcnn.FastRCNN_ResNet18_FPN_Scenes"
  c.proposals = proposals(500, workers=2)
  return c


if __name__ == "__main__":
  import sys

  from research import main as _main

  _main.main(["--config=" + __file__, *sys.argv[1:]])
