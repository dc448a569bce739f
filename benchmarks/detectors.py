"""Inference images/s and training steps/s of Faster R-CNN in Flax and in torchvision.

    python benchmarks/detectors.py [--batch 1,2] [--size 800] [--max-size 1333]
        [--modes infer,train] [--steps 5] [--warmup 2] [--box-score-thresh 0.05]
        [--conv auto|onednn|lax] [--precision default|highest] [--torch-threads N]
        [--json out.json]

    smoke run: python benchmarks/detectors.py --size 320 --max-size 480 --batch 1 \\
        --steps 2 --warmup 1

`research.detection.faster_rcnn.FasterRCNN_ResNet50_FPN(num_classes=90)` against
torchvision's `fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)` built after
`torch.manual_seed(0)`, its weights converted to Flax (`research.convert.torchvision`):
both in this one process, on the same machine (CPU, or the GPU when JAX and torch both
see one), the same weights and the same inputs.

Inputs: photographs (scikit-image's, else seeded noise) of `--size` x 4/3 `--size`
pixels (800 x 1066 by default, a 4:3 photograph at torchvision's 800 px shorter side) go
through torchvision's `GeneralizedRCNNTransform` once, outside the timings; its output
(normalized, padded to a multiple of 32: 800 x 1088) is what both sides are given.
What is timed is the same work on both sides, the detector after its transform:

  infer  torchvision in eval mode under `inference_mode`: backbone -> rpn -> roi_heads on
         the transformed `ImageList` (GeneralizedRCNN.forward without `transform` and
         without `transform.postprocess`, which only rescales boxes to the photographs);
         Flax: the jitted `model.apply(variables, images, image_size)`. Images/s.
  train  torchvision in train mode with targets (3 boxes per image, in the transformed
         frame): the same three parts, the sum of the four losses, backward, an SGD step
         with momentum; Flax: a jitted `jax.value_and_grad` of `faster_rcnn.detection_loss`
         on `model.apply(..., boxes, labels, valid, example_index, train=True,
         rngs={"sample": key})` and the optax SGD update with the same hyperparameters.
         Steps/s (one step is the whole batch).

Trained parameters: torchvision without backbone weights builds its ResNet with
`nn.BatchNorm2d` and every layer trainable (trainable_backbone_layers=5); Flax's ResNet has
`FrozenBatchNorm` (statistics and affine fixed, not parameters) and trains every other
parameter. torchvision's batch norms are therefore put in eval mode with their affine
frozen during training, which makes them the same frozen layer, and the benchmark checks
that both optimizers hold the same number of parameters.

Timings: each call is timed on its own after `--warmup` calls, and the median is reported;
the warm-up (for Flax the tracing and XLA compilation) is reported separately, in seconds.

Data-dependent work: torchvision keeps only the proposals that survive the RPN's NMS and
the class scores above `box_score_thresh` (0.05 by default; `--box-score-thresh` sets it on
both sides), so its box head and final NMS see as many boxes as the weights and the image
leave; Flax's shapes are static: its box head always runs on post_nms_top_n proposals
(1000 per image at test; the invalid ones padded) and its NMS on every class's box. With
these random weights the RPN's NMS keeps fewer than torchvision's 1000 test proposals (507
on a 320x448 photograph), so at inference torchvision's RoI heads do less work than a trained detector's would (in
training both sample 512 RoIs per image). Each inference row is followed by the number of
valid proposals and of detections on each side.

Threads: torch is given as many threads as this process may use cores (as oneDNN's
OpenMP threads are, research.ops.onednn: $RESEARCH_ONEDNN_THREADS overrides both).
`torch.set_num_threads` also sets the calling thread's OpenMP thread count, which oneDNN
reads; the project's oneDNN convolutions set their own on whichever XLA thread runs them
(conv.cc), so the two settings do not interfere. Both OpenMP runtimes wait for every
thread at each parallel region: on a machine whose cores other processes also use, torch
with as many threads as cores can run many times slower than with one (measured: ResNet-50
at 320x448 on 2 busy cores, 0.24 s with 1 thread, 2.7 s with 2), so time on a quiet machine
or compare `--torch-threads 1`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import throughput  # noqa: E402
from research.convert import torchvision as tv_convert  # noqa: E402
from research.detection import faster_rcnn, roi_heads  # noqa: E402
from research.models import layers  # noqa: E402
from research.ops.onednn import library as onednn_library  # noqa: E402
from research.train import host_memory  # noqa: E402

NUM_CLASSES = 90  # COCO's, as torchvision's detector (91 outputs with the background)
LEARNING_RATE, MOMENTUM = 1e-3, 0.9  # small: random weights stay finite over the steps
# Ground truth per image, as fractions of the photograph (x1, y1, x2, y2), and 1-based
# (torchvision's) labels; Flax receives them padded to MAX_BOXES with 0-based labels.
BOXES = np.array([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.9], [0.05, 0.6, 0.3, 0.95]])
LABELS = np.array([1, 18, 62])
MAX_BOXES = 4


def _timed(fn, steps: int, warmup: int) -> tuple[float, float]:
  """(median seconds per call, seconds of the `warmup` calls before) of `fn`, which
  blocks until its work is done."""
  start = time.perf_counter()
  for _ in range(warmup):
    fn()
  warm = time.perf_counter() - start
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds), warm


def photographs(batch: int, size: int) -> np.ndarray:
  """[batch, size, 4/3 size, 3] float32 in [0, 1]: scikit-image's sample photographs
  resized (cycled), else seeded noise when scikit-image is absent."""
  import torch  # pylint: disable=import-outside-toplevel

  shape = (size, int(size * 4 / 3))
  try:
    from skimage import data  # pylint: disable=import-outside-toplevel

    sources = [data.astronaut(), data.coffee(), data.chelsea()]
  except ImportError:
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8) for _ in range(3)]
  out = []
  for i in range(batch):
    x = torch.from_numpy(sources[i % len(sources)]).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=shape, mode="bilinear", antialias=True)
    out.append(x[0].clamp(0, 1).permute(1, 2, 0).numpy())
  return np.stack(out)


def torch_model(args, device):
  """torchvision's detector (seed 0) and a copy of its state_dict taken before any step."""
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models import detection  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  net = detection.fasterrcnn_resnet50_fpn(
    weights=None,
    weights_backbone=None,
    num_classes=NUM_CLASSES + 1,
    min_size=args.size,
    max_size=args.max_size,
    box_score_thresh=args.box_score_thresh,
  )
  state_dict = {k: v.detach().clone() for k, v in net.state_dict().items()}
  return net.to(device).eval(), state_dict


def torch_inputs(net, photos, device):
  """The transformed ImageList and the targets in its frame, on `device`."""
  import torch  # pylint: disable=import-outside-toplevel

  images = [torch.from_numpy(p).permute(2, 0, 1).contiguous() for p in photos]
  h, w = photos.shape[1:3]
  targets = [
    {
      "boxes": torch.tensor(BOXES * [w, h, w, h], dtype=torch.float32),
      "labels": torch.tensor(LABELS, dtype=torch.int64),
    }
    for _ in images
  ]
  with torch.no_grad():
    image_list, targets = net.transform(images, targets)
  image_list = image_list.to(device)
  targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
  return image_list, targets


def torch_timings(net, image_list, targets, modes, steps, warmup, device) -> dict:
  """{mode: (median s per call, warm-up s, detections or final loss, trained params)}."""
  import torch  # pylint: disable=import-outside-toplevel

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  results = {}
  if "infer" in modes:
    net.eval()
    found = []

    def infer():
      with torch.inference_mode():
        features = net.backbone(image_list.tensors)
        proposals, _ = net.rpn(image_list, features)
        detections, _ = net.roi_heads(features, proposals, image_list.image_sizes)
      sync()
      found[:] = [sum(map(len, proposals)), sum(len(d["boxes"]) for d in detections)]

    seconds, warm = _timed(infer, steps, warmup)
    results["infer"] = (seconds, warm, tuple(found), None)
  if "train" in modes:
    net.train()
    # Flax's backbone has frozen batch norm: give torchvision's the same (running
    # statistics, affine not trained) so that both train the same parameters.
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.eval()
        module.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LEARNING_RATE, momentum=MOMENTUM)
    loss_value = []

    def train():
      features = net.backbone(image_list.tensors)
      proposals, rpn_losses = net.rpn(image_list, features, targets)
      _, roi_losses = net.roi_heads(features, proposals, image_list.image_sizes, targets)
      loss = sum({**rpn_losses, **roi_losses}.values())
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sync()
      loss_value[:] = [loss.item()]

    seconds, warm = _timed(train, steps, warmup)
    results["train"] = (seconds, warm, loss_value[0], sum(p.numel() for p in params))
    net.eval()
  return results


def flax_timings(model, variables, images, sizes, gt, modes, steps, warmup) -> dict:
  """{mode: (median s per call, warm-up s incl. compilation, detections or final loss,
  trained params)}. gt: (boxes [N, G, 4], labels [N, G] 0-based, valid [N, G])."""
  results = {}
  images, sizes = jnp.asarray(images), jnp.asarray(sizes)
  if "infer" in modes:
    infer = jax.jit(lambda v, x, s: model.apply(v, x, s, train=False))
    found = []

    def run_infer():
      detections, out = jax.block_until_ready(infer(variables, images, sizes))
      found[:] = [int(out["proposals"]["valid"].sum()), int(detections["valid"].sum())]

    seconds, warm = _timed(run_infer, steps, warmup)
    results["infer"] = (seconds, warm, tuple(found), None)
  if "train" in modes:
    tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    # Arguments, not constants closed over: XLA would embed (and may fold) constants, which
    # a training loop's batches never are. batch_stats holds FrozenBatchNorm's arrays, which
    # the step reads and never writes.
    batch = (variables["batch_stats"], images, sizes, *(jnp.asarray(a) for a in gt))
    batch += (jnp.arange(images.shape[0]),)

    def loss_fn(params, key, batch_stats, images, sizes, boxes, labels, valid, example_index):
      outputs = model.apply(
        {"params": params, "batch_stats": batch_stats},
        images,
        sizes,
        boxes,
        labels,
        valid,
        example_index,
        train=True,
        rngs={"sample": key},
      )
      return faster_rcnn.detection_loss(outputs, None)["loss"]

    def step(params, opt_state, count, *batch):
      key = jax.random.fold_in(jax.random.key(0), count)
      loss, grads = jax.value_and_grad(loss_fn)(params, key, *batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, count + 1, loss

    train_step = jax.jit(step, donate_argnums=(0, 1, 2))
    # The step donates its state: give it copies, not the arrays `variables` holds.
    params = jax.tree.map(jnp.copy, variables["params"])
    state = [params, tx.init(params), jnp.zeros((), jnp.int32)]
    loss_value = []

    def run_train():
      *new_state, loss = jax.block_until_ready(train_step(*state, *batch))
      state[:] = new_state
      loss_value[:] = [float(loss)]

    seconds, warm = _timed(run_train, steps, warmup)
    n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    results["train"] = (seconds, warm, loss_value[0], n_params)
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", default="1,2", help="comma-separated batch sizes")
  parser.add_argument("--size", type=int, default=800, help="the images' shorter side")
  parser.add_argument("--max-size", type=int, default=1333, help="torchvision's max_size")
  parser.add_argument("--modes", default="infer,train", help="infer, train or both")
  parser.add_argument("--steps", type=int, default=5, help="timed calls per row (median)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
  parser.add_argument(
    "--box-score-thresh",
    type=float,
    default=0.05,
    help="both detectors' class-score threshold (torchvision's default 0.05)",
  )
  parser.add_argument(
    "--conv",
    choices=layers.PATHS,
    default="auto",
    help="path of Flax's convolutions (research.models.layers)",
  )
  throughput.add_precision_argument(parser)
  parser.add_argument(
    "--torch-threads",
    type=int,
    default=None,
    help="torch's threads (default: the cores this process may use, as oneDNN's)",
  )
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  args = parser.parse_args(argv)
  batches = [int(b) for b in args.batch.split(",")]
  modes = [m for m in args.modes.split(",") if m]
  if not modes or any(m not in ("infer", "train") for m in modes):
    raise ValueError(f"--modes: expected infer, train or infer,train; received {args.modes!r}.")
  if min(batches) < 1 or args.steps < 1 or args.warmup < 1:
    # One warm-up call at least: otherwise Flax's compilation lands in the timings.
    raise ValueError("--batch, --steps and --warmup must be positive.")
  import torch  # pylint: disable=import-outside-toplevel

  if args.precision == "highest":
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
  device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
  torch.set_num_threads(args.torch_threads or onednn_library.threads())
  with layers.use_conv_path(args.conv):
    conv = layers.conv_path() if device == "cpu" else "lax"

  net, state_dict = torch_model(args, device)
  model = faster_rcnn.FasterRCNN_ResNet50_FPN(
    num_classes=NUM_CLASSES,
    roi_heads=functools.partial(roi_heads.RoIHeads, score_thresh=args.box_score_thresh),
  )
  variables = tv_convert.convert(state_dict, model, input_shape=(1, 64, 64, 3))
  variables = jax.device_put(variables)
  print(
    f"device {device} ({jax.devices()[0].device_kind}), photographs {args.size}x"
    f"{int(args.size * 4 / 3)} (min_size {args.size}, max_size {args.max_size}), precision "
    f"{args.precision}, torch threads {torch.get_num_threads()}, Flax convolutions {conv}, "
    f"box_score_thresh {args.box_score_thresh}"
  )
  print(
    f"{'mode':6} {'batch':>5} {'unit':>8} {'flax':>8} {'torchvision':>11} {'ratio':>6} "
    f"{'warm-up s':>10} {'(torch)':>8} {'dets/loss':>10} {'(torch)':>9}",
    flush=True,
  )
  rows = []
  for batch in batches:
    photos = photographs(batch, args.size)
    image_list, targets = torch_inputs(net, photos, device)
    images = image_list.tensors.permute(0, 2, 3, 1).cpu().numpy()
    sizes = np.asarray(image_list.image_sizes, np.float32)
    boxes = np.zeros((batch, MAX_BOXES, 4), np.float32)
    labels = np.full((batch, MAX_BOXES), -1, np.int32)
    valid = np.zeros((batch, MAX_BOXES), bool)
    for i, t in enumerate(targets):
      k = len(t["labels"])
      boxes[i, :k] = t["boxes"].cpu().numpy()
      labels[i, :k] = t["labels"].cpu().numpy() - 1  # Flax's labels are 0-based
      valid[i, :k] = True
    torch_results = torch_timings(net, image_list, targets, modes, args.steps, args.warmup, device)
    with layers.use_conv_path(args.conv):
      flax_results = flax_timings(
        model, variables, images, sizes, (boxes, labels, valid), modes, args.steps, args.warmup
      )
    for mode in modes:
      f_s, f_warm, f_value, f_params = flax_results[mode]
      t_s, t_warm, t_value, t_params = torch_results[mode]
      if f_params != t_params:
        raise RuntimeError(
          f"the optimizers hold different parameters: Flax {f_params}, torchvision {t_params}."
        )
      # Inference counts images, training counts steps (each of the whole batch).
      per = batch if mode == "infer" else 1
      row = {
        "mode": mode,
        "batch": batch,
        "unit": "img/s" if mode == "infer" else "steps/s",
        "device": device,
        "device_kind": jax.devices()[0].device_kind,
        "flax_conv": conv,
        "keep_freed_memory": host_memory.kept(),
        "image_hw": list(images.shape[1:3]),
        "size": args.size,
        "max_size": args.max_size,
        "precision": args.precision,
        "box_score_thresh": args.box_score_thresh,
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "flax": per / f_s,
        "torchvision": per / t_s,
        "ratio": t_s / f_s,
        "flax_seconds": f_s,
        "torch_seconds": t_s,
        "flax_warmup_seconds": f_warm,
        "torch_warmup_seconds": t_warm,
      }
      if mode == "infer":
        (f_proposals, f_dets), (t_proposals, t_dets) = f_value, t_value
        row |= {
          "flax_proposals": f_proposals,
          "torch_proposals": t_proposals,
          "flax_detections": f_dets,
          "torch_detections": t_dets,
        }
        values = f"{f_dets:10d} {t_dets:9d}"
      else:
        row |= {"flax_loss": f_value, "torch_loss": t_value, "trained_params": f_params}
        values = f"{f_value:10.4f} {t_value:9.4f}"
      rows.append(row)
      print(
        f"{mode:6} {batch:5d} {row['unit']:>8} {row['flax']:8.3f} {row['torchvision']:11.3f} "
        f"{row['ratio']:6.2f} {f_warm:10.1f} {t_warm:8.1f} {values}",
        flush=True,
      )
      if mode == "infer":
        print(
          f"{'':6} valid proposals: flax {f_proposals}, torchvision {t_proposals} (images "
          f"{images.shape[1]}x{images.shape[2]} padded)"
        )
  print(
    "ratio = flax / torchvision; warm-up: the untimed first calls (Flax's compilation "
    "included); last columns: detections (infer), loss after the last step (train)"
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == "__main__":
  # As research.main does, before JAX starts (tests call main() in their own processes).
  host_memory.keep_freed_memory()
  main()
