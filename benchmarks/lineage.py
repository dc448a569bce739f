"""The detection lineage on one machine: R-CNN -> Fast R-CNN -> Faster R-CNN, and YOLO, each
trained by its `:runlocal`, on the same test scenes: accuracy, seconds per image, errors.

    python benchmarks/lineage.py [--rcnn workdirs/rcnn_scenes]
        [--fast-rcnn workdirs/fast_rcnn_scenes] [--faster-rcnn workdirs/faster_rcnn_scenes]
        [--mask-rcnn DIR] [--yolo workdirs/yolo_scenes]
        [--yolo-per-cell workdirs/yolo_scenes_per_cell]
        [--images 500] [--proposal-images 100] [--svd-ranks 64,32]
        [--paper-scale 2000] [--json out.json] [--plot lineage.png]
        [--errors lineage_errors.png]

Each workdir is a finished run of its experiment (README: `rcnn_voc2007.py:runlocal`,
`fast_rcnn_voc2007.py:runlocal`, `faster_rcnn_voc2007.py:runlocal`,
`yolo_v1_voc2007.py:runlocal` and `:runlocal_per_cell`; a missing one is skipped with a
line saying so). Every detector sees the first `--images` scenes of its data
set's test split (digit_scenes/multi: all 500), one image at a time, as a user's image
would come; accuracy is VOC07 mAP@0.5 and COCO AP (`research.evaluate.detection`, the
numbers the runs' evaluators report).

Seconds per image, the papers' split:
  proposals    selective search (fast mode, the runs' `config.proposals`) of one image,
               timed on the first `--proposal-images` scenes in this process, one process
               and one thread (R-CNN and Fast R-CNN read the same proposals from the cache
               the runs computed; their timing is what computing them costs a new image).
               Faster R-CNN's RPN runs inside its network: "-" here.
  network      R-CNN: warping every proposal to the window size and the fine-tuned CNN on
               the windows; Fast and Faster R-CNN: the jitted forward pass on the image up
               to the box predictor's outputs (the conv layers once, for Faster R-CNN the
               RPN with its NMS, RoI pooling, the fc layers: the RoI heads' raw_outputs),
               waited for (`block_until_ready`).
               YOLO: its network to the S x S x (B * 5 + C) predictions.
  postprocess  R-CNN: the SVMs, the box regressors and per-class NMS on the host; Fast and
               Faster R-CNN: the heads' softmax, box decoding and per-class NMS (jitted
               `RoIHeads.postprocess_raw`), the detections on the host in the image's pixels;
               YOLO: class-specific confidences, decoding and per-class NMS
               (`YOLO.postprocess_raw`).
Medians over the images, after one warm-up image (compilation excluded).

`--mask-rcnn DIR` adds a Mask R-CNN run as a box detector: its network stops at the box
predictor like Faster R-CNN's, so the mask branch (run on the detections) is left out.

Fast R-CNN with truncated SVD (Section 3.1) is the same trained detector with its box
head's fc6 and fc7 factored at `--svd-ranks` (`research.detection.fast_rcnn.with_svd`).

The plot puts mAP@0.5 against total milliseconds per image (log scale). `--json` writes
{"digit_scenes": rows, "paper_scale": rows}; each row has images_per_s (1 / total).

`--errors PNG`: the YOLO paper's Section 4.1 analysis (Hoiem et al.: correct, localization,
similar, other, background among each class's top detections;
`research.evaluate.detection.error_analysis`) of every detector on the same scenes, as
pies in the PNG and as row["errors"] in the json. No digit counts as "similar" to another.

`--paper-scale N` adds the networks' seconds per image at the papers' sizes, random weights
(`paper_scale`): on the scenes, R-CNN's windows are 32 x 32 on a 128 x 128 image and
selective search gives about 190 proposals, so sharing the convolutions can save at most
about 190 / (128^2 / 32^2) = 12x, and Fast R-CNN's fc head per RoI costs half of R-CNN's
whole network per window; at VOC's sizes (2,000 windows of 224 x 224, a 600 x 1000 image,
VGG-16) the papers' ordering is a matter of arithmetic that this measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research import predict  # noqa: E402
from research.data import proposals as proposal_lib  # noqa: E402
from research.data import sources as data_sources  # noqa: E402
from research.train import tasks  # noqa: E402
from research.train.loop import build_model  # noqa: E402


@dataclasses.dataclass
class Run:
  """A finished run of a workdir, rebuilt: its config, task, model, variables and test source."""

  name: str
  workdir: str
  config: object
  task: object
  model: object
  variables: dict
  inputs: object
  test: object  # detection records of the test split (with proposals where the run had them)
  num_classes: int


def load(name: str, workdir: str) -> Run:
  config = predict.load_config(workdir, tasks=("detection", "rcnn"))
  task = tasks.resolve(config.get("task", "classification"))
  spec, sources = data_sources.from_config(config)
  num_classes = config.get("num_classes") or spec.num_classes
  _, variables = predict.restore_variables(workdir)
  test = sources(spec.test_split)
  test = getattr(test, "detection", test)  # R-CNN's windows -> their detection records
  return Run(
    name,
    os.path.abspath(workdir),
    config,
    task,
    build_model(config, num_classes),
    variables,
    task.input_fns(config, num_classes),
    test,
    num_classes,
  )


def _truth(record: dict) -> dict:
  return {
    k: np.asarray(record[k]) for k in ("boxes", "labels", "difficult", "crowd") if k in record
  }


def _accuracy(detections, truths, num_classes: int) -> dict:
  from research.evaluate import detection  # pylint: disable=import-outside-toplevel

  numbers = detection.evaluate(detections, truths, num_classes=num_classes, masks=False)
  return {
    "map50": numbers["box_voc07_mAP"],
    "coco_ap": numbers["box_coco_AP"],
    "coco_ap50": numbers["box_coco_AP50"],
  }


def time_proposals(test, config, images: int) -> float:
  """Median seconds of selective search on one image (the run's mode and count)."""
  p = config.proposals
  seconds = []
  for i in range(min(images, len(test))):
    image = proposal_lib.rgb(np.asarray(test[i]["image"]))
    start = time.perf_counter()
    proposal_lib.propose(image, p.get("mode", "fast"), p.get("max_proposals", 2000))
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def measure_rcnn(run: Run, images: int) -> dict:
  from research.detection import rcnn  # pylint: disable=import-outside-toplevel
  from research.train.tasks import rcnn as rcnn_task  # pylint: disable=import-outside-toplevel

  classifiers = rcnn.Classifiers.load(os.path.join(run.workdir, rcnn.CLASSIFIERS_FILE))
  r = run.config.regions
  detection_eval = next(
    (e for e in run.config.get("evals") or () if e["type"] == "rcnn_detection"), {}
  )
  features = rcnn_task.WindowFeatures(
    run.model,
    run.variables,
    run.inputs.transform,
    r.get("size", 227),
    tuple(r.get("fill", (0,))),
    batch=int(detection_eval.get("batch", 512)),
  )
  score_thresh = float(detection_eval.get("score_thresh", -1.0))
  rcnn_task.detect_image(features, classifiers, run.test[0], score_thresh)  # compiles
  detections, truths, network, post = [], [], [], []
  for i in range(images):
    record = run.test[i]
    found, seconds_network, seconds_post = rcnn_task.detect_image(
      features, classifiers, record, score_thresh
    )
    detections.append(found)
    truths.append(_truth(record))
    network.append(seconds_network)
    post.append(seconds_post)
  return {
    **_accuracy(detections, truths, run.num_classes - 1),
    "_found": (detections, truths, run.num_classes - 1),
    "network_s": statistics.median(network),
    "postprocess_s": statistics.median(post),
  }


def _split(model, num_classes: int):
  """(the model returning raw outputs, their postprocess, the label offset): Fast and Faster
  R-CNN stop at the box predictor (the RoI heads' raw_outputs; class 0 is the background
  inside), YOLO at its S x S x (B * 5 + C) predictions."""
  if hasattr(model, "roi_heads"):
    raw_model = model.clone(roi_heads=functools.partial(model.roi_heads, raw_outputs=True))
    return raw_model, model.roi_heads(num_classes=num_classes + 1).postprocess_raw, 1
  return model.clone(raw_outputs=True), model.postprocess_raw, 0


def measure_flax(run: Run, images: int, model=None, variables=None) -> dict:
  """A detector of the detection task, one image at a time (see the module docstring): the
  network is the model up to its raw outputs (`_split`), the postprocess its own decoding
  and NMS, jitted apart."""
  model, variables = model or run.model, variables or run.variables
  raw_model, postprocess, offset = _split(model, run.num_classes)
  network_fn = jax.jit(lambda v, x, kw: raw_model.apply(v, x, train=False, **kw)[0])
  postprocess_fn = jax.jit(postprocess)
  record_fn = run.inputs.eval_record or (lambda r: r)

  def batch_of(record):
    one = record_fn(record)
    return run.inputs.transform({k: np.asarray(v)[None] for k, v in one.items()})

  def detect(raw, batch) -> dict:
    det = jax.device_get(postprocess_fn(raw))
    keep = np.asarray(det["valid"][0], bool)
    (big_h, big_w), (h, w) = batch["original_size"][0], batch["image_size"][0]
    scale = np.array([big_w / w, big_h / h, big_w / w, big_h / h])
    return {
      "boxes": np.asarray(det["boxes"][0])[keep] * scale,
      "scores": np.asarray(det["scores"][0])[keep],
      "labels": np.asarray(det["labels"][0])[keep] - offset,
    }

  warm = batch_of(run.test[0])
  detect(network_fn(variables, warm["image"], run.task.model_kwargs(warm, train=False)), warm)
  detections, truths, network, post = [], [], [], []
  for i in range(images):
    record = run.test[i]
    batch = batch_of(record)
    kwargs = run.task.model_kwargs(batch, train=False)
    start = time.perf_counter()
    raw = jax.block_until_ready(network_fn(variables, batch["image"], kwargs))
    middle = time.perf_counter()
    detections.append(detect(raw, batch))
    post.append(time.perf_counter() - middle)
    network.append(middle - start)
    truths.append(_truth(record))
  return {
    **_accuracy(detections, truths, run.num_classes),
    "_found": (detections, truths, run.num_classes),
    "network_s": statistics.median(network),
    "postprocess_s": statistics.median(post),
  }


def _median_seconds(fn, repeat: int) -> float:
  jax.block_until_ready(fn())  # compiles
  seconds = []
  for _ in range(repeat):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def paper_scale(windows: int = 2000, sample: int = 16, repeat: int = 3) -> list[dict]:
  """Network seconds per image at the papers' sizes, random weights (timing only, no
  accuracy): R-CNN's VGG-16 on `windows` warped 224 x 224 windows of a 600 x 1000 image (the
  warping and the network timed on `sample` windows, times windows / sample) against Fast
  R-CNN's VGG-16 (`FastRCNN_VGG16`: conv5_3 once, RoI max pooling 7 x 7, fc6 and fc7) on the
  image with the same `windows` proposals, without and with truncated SVD at the paper's
  ranks (fc6 1024, fc7 256). Random proposals inside the image, sides 20 to 400 pixels.
  YOLO and Fast YOLO: their networks on the image resized to 448 x 448."""
  from research.detection import fast_rcnn, rcnn  # pylint: disable=import-outside-toplevel
  from research.models import vgg  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  h, w = 600, 1000
  image = rng.integers(0, 256, (h, w, 3), np.uint8)
  size = rng.uniform(20, 400, (windows, 2))
  corner = rng.uniform(0, 1, (windows, 2)) * (np.array([w, h]) - size)
  boxes = np.concatenate([corner, corner + size], 1).astype(np.float32)
  key = jax.random.PRNGKey(0)

  net = vgg.VGG16(num_classes=21)
  crops = rcnn.warp(image, boxes[:sample], 224, fill=(124, 116, 104)).astype(np.float32)
  net_vars = net.init(key, crops[:1], train=False)
  net_fn = jax.jit(lambda v, x: net.apply(v, x, train=False))
  start = time.perf_counter()
  for _ in range(repeat):
    rcnn.warp(image, boxes[:sample], 224, fill=(124, 116, 104))
  warp_s = (time.perf_counter() - start) / repeat
  net_s = _median_seconds(lambda: net_fn(net_vars, crops), repeat)
  rows = [
    {
      "detector": f"R-CNN, VGG-16, {windows} windows of 224 x 224",
      "network_s": (warp_s + net_s) * windows / sample,
    }
  ]

  model = fast_rcnn.FastRCNN_VGG16(num_classes=20)
  x = jnp.asarray(image, jnp.float32)[None] / 255.0
  proposals, valid = jnp.asarray(boxes)[None], jnp.ones((1, windows), bool)
  params = model.init(key, x)["params"]
  for name, ranks in (
    ("Fast R-CNN, VGG-16", None),
    ("Fast R-CNN, VGG-16, SVD 1024/256", (1024, 256)),
  ):
    m, p = (model, params) if ranks is None else fast_rcnn.with_svd(model, params, ranks)
    raw = m.clone(roi_heads=functools.partial(m.roi_heads, raw_outputs=True))
    fn = jax.jit(lambda v, x, b, ok, raw=raw: raw.apply(v, x, b, ok)[0]["class_logits"])
    seconds = _median_seconds(lambda fn=fn, p=p: fn({"params": p}, x, proposals, valid), repeat)
    rows.append({"detector": f"{name}, 600 x 1000, {windows} RoIs", "network_s": seconds})

  from research.detection import yolo  # pylint: disable=import-outside-toplevel

  x448 = jax.image.resize(x, (1, 448, 448, 3), "bilinear")
  for name, cls in (("YOLO, 24 conv layers", yolo.YOLOv1), ("Fast YOLO, 9", yolo.FastYOLOv1)):
    m = cls(num_classes=20, raw_outputs=True)
    v = jax.jit(m.init)(key, x448)
    fn = jax.jit(lambda v, x, m=m: m.apply(v, x)[0]["predictions"])
    seconds = _median_seconds(lambda fn=fn, v=v: fn(v, x448), repeat)
    rows.append({"detector": f"{name}, 448 x 448 -> 7 x 7 x 30", "network_s": seconds})
  for row in rows:
    row["rcnn_over_this"] = rows[0]["network_s"] / row["network_s"]
  return rows


def plot(rows: list[dict], path: str) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for row in rows:
    ms = 1000 * row["total_s"]
    ax.scatter(ms, row["map50"], s=40)
    ax.annotate(row["detector"], (ms, row["map50"]), textcoords="offset points", xytext=(5, 5))
  ax.set_xscale("log")
  ax.margins(x=0.35, y=0.15)  # room for the labels
  ax.set_xlabel("milliseconds per image (proposals + network + postprocessing)")
  ax.set_ylabel("VOC07 mAP@0.5")
  ax.set_title("R-CNN -> Fast R-CNN -> Faster R-CNN: 500 digit scenes, 2 CPU cores")
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def errors(rows: list[dict], found: dict, path: str) -> str:
  """The YOLO paper's Section 4.1 analysis of each detector's detections (row["errors"]:
  the five fractions), drawn as pies in `path`."""
  from research.evaluate import detection  # pylint: disable=import-outside-toplevel
  from research.evaluate.detection_errors import CATEGORIES  # pylint: disable=import-outside-toplevel

  analyses = {}
  for row in rows:
    detections, truths, num_classes = found[row["detector"]]
    analysis = detection.error_analysis(detections, truths, num_classes)
    analyses[row["detector"]] = analysis
    # None where no detection was counted (the fractions are NaN then; JSON has no NaN).
    row["errors"] = {k: analysis[k] if analysis["count"] else None for k in CATEGORIES}
    print(
      f"{row['detector']:28s} errors: "
      + "  ".join(f"{k} {100 * (v or 0):.1f}%" for k, v in row["errors"].items()),
      flush=True,
    )
  title = "Errors of each detector's top detections (Hoiem et al.; YOLO paper, Fig. 4)"
  print("error pies:", detection.plot_error_pies(analyses, path, title=title))
  return path


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rcnn", default="workdirs/rcnn_scenes")
  parser.add_argument("--fast-rcnn", default="workdirs/fast_rcnn_scenes")
  parser.add_argument("--faster-rcnn", default="workdirs/faster_rcnn_scenes")
  parser.add_argument("--mask-rcnn", default="")
  parser.add_argument("--yolo", default="workdirs/yolo_scenes")
  parser.add_argument("--yolo-per-cell", default="workdirs/yolo_scenes_per_cell")
  parser.add_argument(
    "--errors",
    default="",
    help="the YOLO paper's error analysis of every detector, as pies in this PNG; empty: none",
  )
  parser.add_argument("--images", type=int, default=500)
  parser.add_argument("--proposal-images", type=int, default=100)
  parser.add_argument("--svd-ranks", default="64,32", help="fc6,fc7 ranks; empty: no SVD row")
  parser.add_argument(
    "--paper-scale",
    type=int,
    default=0,
    help="N > 0: also time the networks at the papers' "
    "sizes with N proposals (random weights; 2000 is the papers')",
  )
  parser.add_argument("--json", default="")
  parser.add_argument("--plot", default="lineage.png")
  args = parser.parse_args(argv)
  if args.images < 1 or args.proposal_images < 1:
    parser.error(
      f"--images and --proposal-images: expected >= 1; got {args.images}, {args.proposal_images}."
    )
  print(f"# {jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}")
  rows, proposal_seconds, found = [], {}, {}

  def proposals_of(run: Run) -> float:
    key = json.dumps(run.config.proposals.to_dict(), sort_keys=True)
    if key not in proposal_seconds:
      proposal_seconds[key] = time_proposals(run.test, run.config, args.proposal_images)
    return proposal_seconds[key]

  def add(name: str, run: Run, numbers: dict, proposals_s: float | None) -> None:
    found[name] = numbers.pop("_found")
    row = {
      "detector": name,
      "workdir": run.workdir,
      "images": min(args.images, len(run.test)),
      **numbers,
      "proposals_s": proposals_s,
      "total_s": (proposals_s or 0.0) + numbers["network_s"] + numbers["postprocess_s"],
    }
    row["images_per_s"] = 1.0 / row["total_s"]
    rows.append(row)
    shown = "-" if proposals_s is None else f"{proposals_s:.3f}"
    print(
      f"{name:28s} mAP@0.5 {row['map50']:.3f}  COCO AP {row['coco_ap']:.3f}  s/image: proposals "
      f"{shown}  network {row['network_s']:.4f}  postprocess {row['postprocess_s']:.4f}  "
      f"total {row['total_s']:.3f} ({row['images_per_s']:.1f} images/s)",
      flush=True,
    )

  for name, workdir in (
    ("R-CNN", args.rcnn),
    ("Fast R-CNN", args.fast_rcnn),
    ("Faster R-CNN", args.faster_rcnn),
    ("Mask R-CNN", args.mask_rcnn),
    ("YOLO", args.yolo),
    ("YOLO, per-cell fc", args.yolo_per_cell),
  ):
    if not workdir:
      continue
    if not os.path.isdir(workdir):
      print(f"{name}: no workdir {workdir!r}; skipped (train it with its experiment's :runlocal)")
      continue
    run = load(name, workdir)
    images = min(args.images, len(run.test))
    if name == "R-CNN":
      add(name, run, measure_rcnn(run, images), proposals_of(run))
    elif name == "Fast R-CNN":
      add(name, run, measure_flax(run, images), proposals_of(run))
      if args.svd_ranks:
        from research.detection import fast_rcnn  # pylint: disable=import-outside-toplevel

        ranks = tuple(int(v) for v in args.svd_ranks.split(","))
        model, params = fast_rcnn.with_svd(run.model, run.variables["params"], ranks)
        variables = {**run.variables, "params": params}
        numbers = measure_flax(run, images, model, variables)
        add(f"Fast R-CNN, SVD {ranks[0]}/{ranks[1]}", run, numbers, proposals_of(run))
    else:
      add(name, run, measure_flax(run, images), None)
  if args.errors and found:
    errors(rows, found, args.errors)
  paper = paper_scale(args.paper_scale) if args.paper_scale > 0 else []
  for row in paper:
    print(
      f"{row['detector']:52s} network {row['network_s']:8.2f} s/image "
      f"(R-CNN / this: {row['rcnn_over_this']:.1f}x)",
      flush=True,
    )
  if args.plot and rows:
    print("plot:", plot(rows, args.plot))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"digit_scenes": rows, "paper_scale": paper}, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
