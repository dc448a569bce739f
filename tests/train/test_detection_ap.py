"""The host-side DetectionAP evaluator over a split, on real digit_scenes/multi scenes, with
fake detectors whose exact AP is known (scenic-style trainer tests)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from research.data import detection as data
from research.detection import mask_head
from research.evaluate import detection
from research.train import evaluators
from research.train.parallel import DataParallel
from research.train.state import TrainState
from tests.conftest import multi_test_scenes


class _Echo(nn.Module):
  """Returns the ground truth it is handed, shifted by `shift` pixels, as detections."""

  shift: float = 0.0

  @nn.compact
  def __call__(self, images, *, train=False, truth=None):
    del images, train
    b, k = truth["labels"].shape
    dets = {
      "boxes": truth["boxes"] + self.shift,
      "scores": jnp.broadcast_to(1.0 - 0.01 * jnp.arange(k, dtype=jnp.float32), (b, k)),
      "labels": jnp.maximum(truth["labels"], 0),
      "valid": truth["valid"],
      "masks": truth["masks"].astype(jnp.float32),
    }
    return dets, {}


def _truth_kwargs(batch, *, train):
  del train
  return {"truth": {k: batch[k] for k in ("boxes", "labels", "valid", "masks")}}


@pytest.fixture(scope="module")
def records():
  return [data.from_digit_scenes(r) for r in multi_test_scenes(20)]


TRANSFORM = data.DetectionTransform(size=64, max_boxes=6)


def _run(records, shift, spec, model=None):
  ctx = evaluators.Context(
    model=_Echo(shift) if model is None else model,
    parallel=DataParallel("jit"),
    sources=lambda split: records,
    transform=lambda batch: batch,  # fixed shapes come from the record transform
    eval_record=TRANSFORM,
    model_kwargs=_truth_kwargs,
    eval_batch_size=8,  # 20 scenes: the last batch is padded, its padding masked out
    num_classes=10,
    workdir="/tmp",
    train_split="train",
    test_split="test",
  )
  evaluator = evaluators.DetectionAP(ConfigDict(spec), ctx)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params={},
    batch_stats={},
    opt_state={},
    rng=jax.random.PRNGKey(0),
    tx=None,
  )
  return evaluator.run(state, final=True)


def test_perfect_detections_score_one_on_every_metric(records):
  out = _run(records, 0.0, {"type": "detection_ap", "masks": True})
  for key in ("test_map50", "test_map50_area", "test_coco_ap", "test_coco_ap50", "test_mask_ap"):
    assert out[key] == pytest.approx(1.0), (key, out)


def test_shifted_detections_equal_evaluate_in_the_original_pixels(records):
  out = _run(records, 1.0, {"type": "detection_ap"})
  # Directly: the same shifted boxes, scaled back to the scenes' 128x128 pixels.
  dets, gts = [], []
  for r in records:
    t = TRANSFORM(r)
    scale = t["original_size"][0] / t["image_size"][0]
    n = int(t["valid"].sum())
    gts.append({"boxes": t["boxes"][:n] * scale, "labels": t["labels"][:n]})
    dets.append(
      {
        "boxes": (t["boxes"][:n] + 1.0) * scale,
        "labels": t["labels"][:n],
        "scores": 1.0 - 0.01 * np.arange(n),
      }
    )
  want = detection.evaluate(dets, gts, num_classes=10)
  assert 0.0 < out["test_coco_ap"] < 1.0
  assert out["test_coco_ap"] == pytest.approx(want["box_coco_AP"], abs=1e-12)
  assert out["test_map50"] == pytest.approx(want["box_voc07_mAP"], abs=1e-12)
  assert out["test_coco_aps"] == pytest.approx(want["box_coco_APs"], abs=1e-12)


def test_unknown_keys_of_a_detection_entry_are_errors(records):
  with pytest.raises(ValueError, match=r"'detection_ap' entries take the keys"):
    _run(records, 0.0, {"type": "detection_ap", "iou": 0.5})


class _EchoMaskProbs(nn.Module):
  """Mask R-CNN's contract: the ground truth boxes as detections with "mask_probs", each
  object's mask cropped to 28x28 at its box (the aligned mask branch's perfect target)."""

  @nn.compact
  def __call__(self, images, *, train=False, truth=None):
    del images, train
    b, k = truth["labels"].shape
    crop = jax.vmap(
      lambda m, bx: mask_head.project_masks_on_boxes(m, bx, jnp.arange(k), 28, aligned=True)
    )
    return {
      "boxes": truth["boxes"],
      "scores": jnp.broadcast_to(1.0 - 0.01 * jnp.arange(k, dtype=jnp.float32), (b, k)),
      "labels": jnp.maximum(truth["labels"], 0),
      "valid": truth["valid"],
      "mask_probs": crop(truth["masks"], truth["boxes"]),
    }, {}


def test_mask_probs_are_pasted_in_the_resized_image_and_give_mask_ap(records):
  """Masks default on when the detector gives them; the 28x28 crops pasted back at their
  boxes (torchvision's paste) score as evaluate() scores them directly."""
  out = _run(records, 0.0, {"type": "detection_ap"}, model=_EchoMaskProbs())
  dets, gts = [], []
  for r in records:
    t = TRANSFORM(r)
    n, (h, w) = int(t["valid"].sum()), (int(v) for v in t["image_size"])
    crops = mask_head.project_masks_on_boxes(
      t["masks"][:n], t["boxes"][:n], np.arange(n), 28, aligned=True
    )
    pasted = mask_head.paste_masks_in_image(np.asarray(crops), t["boxes"][:n], (h, w)) >= 0.5
    labels = t["labels"][:n]
    gts.append({"boxes": t["boxes"][:n], "labels": labels, "masks": t["masks"][:n, :h, :w]})
    dets.append(
      {
        "boxes": t["boxes"][:n],
        "labels": labels,
        "scores": 1.0 - 0.01 * np.arange(n),
        "masks": pasted,
      }
    )
  want = detection.evaluate(dets, gts, num_classes=10, masks=True)
  assert out["test_map50"] == pytest.approx(1.0)
  # Thin strokes of 8-32 pixel digits lose IoU in a 28x28 round trip: AP 0.50, AP50 0.91.
  assert 0.3 < out["test_mask_ap"] < out["test_mask_ap50"] < 1.0
  assert out["test_mask_ap"] == pytest.approx(want["mask_coco_AP"], abs=1e-12)
