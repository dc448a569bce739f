"""The segmentation task through the one training loop: the loss ignores label 255, the
evaluator's numbers are `segmentation_metrics`' on the same predictions, a tiny FCN trains
on digit_scenes/multi and FCN-16s starts from an FCN-32s workdir; bad data are errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from experiments import fcn_voc2012
from research.data import segmentation as data
from research.data import sources
from research.evaluate.segmentation import segmentation_metrics
from research.train import init, loop, tasks
from research.train.tasks import segmentation

# VGG's pattern with 5 pools (pool3 and pool4 feed the skips) at toy widths.
TINY = {"cfg": (4, "M", 4, "M", 8, "M", 8, "M", 8, "M"), "hidden": 16, "dropout_rate": 0.0}


def _numpy_loss(logits, labels):
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  valid = labels != 255
  picked = np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  return -picked[valid].mean()


def test_the_loss_is_the_mean_cross_entropy_of_the_pixels_not_labelled_255():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32) * 3
  labels = rng.integers(0, 4, (2, 5, 6)).astype(np.int32)
  labels[0, :2] = 255
  labels[1, :, 4:] = 255
  loss = segmentation.segmentation_loss((jnp.asarray(logits), {}), {"labels": labels})
  assert float(loss["loss"]) == pytest.approx(_numpy_loss(logits, labels), rel=1e-5)
  valid = labels != 255
  accuracy = (logits.argmax(-1) == labels)[valid].mean()
  assert float(loss["pixel_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
  # The ignored pixels' logits change nothing and get no gradient.
  grad = jax.grad(lambda x: segmentation.segmentation_loss((x, {}), {"labels": labels})["loss"])(
    jnp.asarray(logits)
  )
  assert not np.asarray(grad)[~valid].any() and np.asarray(grad)[valid].any()
  changed = np.where(valid[..., None], logits, 100.0).astype(np.float32)
  again = segmentation.segmentation_loss((jnp.asarray(changed), {}), {"labels": labels})["loss"]
  assert float(again) == pytest.approx(float(loss["loss"]), rel=1e-6)
  assert (
    float(segmentation.segmentation_loss((logits, {}), {"labels": labels * 0 + 255})["loss"]) == 0
  )
  with pytest.raises(ValueError, match="the segmentation task's loss is 'segmentation'"):
    segmentation.loss_fn(ConfigDict({"loss": "classification"}))


def test_class_weights_weigh_each_pixel_by_its_class_and_bad_weights_are_errors():
  """config.class_weights: sum(w[y] ce) / sum(w[y]) over the valid pixels (the paper's
  class balancing by weighting the loss); all-equal weights give the plain loss."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 6, 3)).astype(np.float32) * 3
  labels = rng.integers(0, 3, (2, 5, 6)).astype(np.int32)
  labels[0, 0] = 255
  weights = (0.5, 2.0, 7.0)
  loss = segmentation.loss_fn(ConfigDict({"class_weights": weights}))
  got = float(loss((jnp.asarray(logits), {}), {"labels": labels})["loss"])
  shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  valid = labels != 255
  ce = -np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid]
  w = np.asarray(weights)[labels[valid]]
  assert got == pytest.approx((w * ce).sum() / w.sum(), rel=1e-5)
  equal = segmentation.loss_fn(ConfigDict({"class_weights": (3.0, 3.0, 3.0)}))
  plain = segmentation.loss_fn(ConfigDict({}))
  assert float(equal((logits, {}), {"labels": labels})["loss"]) == pytest.approx(
    float(plain((logits, {}), {"labels": labels})["loss"]), rel=1e-5
  )
  with pytest.raises(ValueError, match=r"class_weights: expected one positive number"):
    segmentation.loss_fn(ConfigDict({"class_weights": (1.0, -1.0, 1.0)}))
  with pytest.raises(ValueError, match=r"class_weights: expected 4 weights \(num_classes\)"):
    segmentation.loss_fn(ConfigDict({"class_weights": weights, "num_classes": 4}))
  with pytest.raises(ValueError, match=r"expected one weight per class, 3 .* received 2"):
    segmentation.loss_fn(ConfigDict({"class_weights": (1.0, 2.0)}))(
      (logits, {}), {"labels": labels}
    )


def test_the_scenes_class_frequencies_are_the_training_labels_and_weigh_pixels_to_one():
  """fcn_voc2012's class weights come from the training scenes' pixel counts (recounted on
  the first 1,000 scenes), and a pixel's mean weight is 1."""
  source = data.segmentation_source("digit_scenes/multi", "train[:1000]")
  counts = sum(np.bincount(source[i]["labels"].ravel(), minlength=11) for i in range(len(source)))
  measured = counts / counts.sum()
  expected = np.asarray(fcn_voc2012.SCENES_CLASS_FREQUENCIES)
  assert expected.sum() == pytest.approx(1.0, abs=1e-4)
  assert measured[0] == pytest.approx(expected[0], abs=2e-3)
  np.testing.assert_allclose(measured[1:], expected[1:], rtol=0.2)
  weights = np.asarray(fcn_voc2012.balanced_weights(expected))
  assert (weights * expected).sum() == pytest.approx(1.0, abs=1e-3)
  np.testing.assert_allclose(
    weights[1:] / weights[0], (expected[0] / expected[1:]) ** 0.5, rtol=1e-3
  )


def test_the_evaluator_sums_the_confusion_of_a_split_into_segmentation_metrics():
  """Batches with padded rows (mask False) and 255s: the summed device sums give exactly the
  numbers `segmentation_metrics` gives on all the real rows at once."""
  rng = np.random.default_rng(1)
  c = 5
  logits = rng.normal(size=(7, 9, 8, c)).astype(np.float32)
  labels = rng.integers(0, c, (7, 9, 8)).astype(np.int32)
  labels[labels == 3] = 255  # class 3 never labelled, but predicted: IU 0
  labels[2, :, :3] = 255
  batches = [slice(0, 3), slice(3, 6), slice(6, 7)]
  totals = None
  for rows in batches:
    n = rows.stop - rows.start
    pad = 3 - n  # the last batch is padded with copies of its last row, masked out
    batch = {
      "labels": np.concatenate([labels[rows]] + [labels[rows][-1:]] * pad),
      "mask": np.arange(3) < n,
    }
    out = np.concatenate([logits[rows]] + [logits[rows][-1:]] * pad)
    sums = jax.jit(segmentation.Segmentation.sums)((out, {}), batch)
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  numbers = segmentation.Segmentation.summarize(totals, "test_")
  expected = segmentation_metrics(logits.argmax(-1), labels, c)
  for key, value in expected.items():
    assert numbers[f"test_{key}"] == pytest.approx(value, abs=1e-12), key
  assert numbers["test_loss"] == pytest.approx(_numpy_loss(logits, labels), rel=1e-5)
  assert set(numbers) == {f"test_{k}" for k in (*expected, "loss")}


def _config(stride: int) -> ConfigDict:
  c = fcn_voc2012.get_config(f"runlocal{stride}")
  c.model_kwargs.update(TINY)  # the experiment's net (batch norm, learned upsampling), narrower
  c.train_split = "train[:16]"
  c.batch_size = 4
  c.eval_batch_size = 4
  c.total_steps = 2
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.evals = [ConfigDict({"type": "segmentation", "split": "test[:8]", "prefix": "test_"})]
  return c


def test_fcn32s_trains_on_digit_scenes_and_fcn16s_starts_from_its_workdir(tmp_path):
  c = _config(32)
  workdir = str(tmp_path / "fcn32s")
  results = loop.train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  for key in ("test_mean_iu", "test_pixel_accuracy", "test_mean_accuracy", "test_fw_iu"):
    assert 0.0 <= written[key] <= 1.0 and written[key] == results[key], key
  for name in ("learning_curves.png", "predictions_test_8.png"):
    assert os.path.getsize(os.path.join(workdir, "figures", name)) > 0

  # FCN-16s from FCN-32s's workdir: every shared variable loaded (batch norm statistics
  # too), score_pool4 left at zero, the new learned upsamplings bilinear.
  c16 = _config(16)
  c16.init.path = workdir
  model = loop.build_model(c16, 11)
  fresh = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
  variables, report = init.load(c16.init, dict(fresh))
  assert report["fresh"] == [
    "score_pool4/bias",
    "score_pool4/kernel",
    "upscore16/kernel",
    "upscore2/kernel",
  ]
  assert report["ignored"] == ["upscore/kernel"]  # FCN-32s's 64 x 64 upsampling
  stats = init._latest_checkpoint(workdir)["batch_stats"]["features.1"]["mean"]
  np.testing.assert_array_equal(variables["batch_stats"]["features.1"]["mean"], stats)
  source = init._latest_checkpoint(workdir)["params"]
  for name in ("features.0", "fc6", "fc7", "score_fr"):
    np.testing.assert_array_equal(variables["params"][name]["kernel"], source[name]["kernel"])
  assert not np.asarray(variables["params"]["score_pool4"]["kernel"]).any()
  c16.total_steps = c16.checkpoint_every_steps = 1
  c16.evals[0].figure_images = 0
  results16 = loop.train_and_evaluate(c16, str(tmp_path / "fcn16s"))
  assert 0.0 <= results16["test_mean_iu"] <= 1.0
  upsampling = lambda k: k * k * 11 * 11  # noqa: E731  a learned [k, k, C, C] kernel
  added = 8 * 11 + 11 + upsampling(4) + upsampling(32) - upsampling(64)  # score_pool4, ...
  assert results16["param_count"] == results["param_count"] + added


def test_the_task_resolves_and_bad_settings_are_errors():
  assert tasks.resolve("segmentation") is segmentation
  spec, split = sources.from_config(
    ConfigDict({"task": "segmentation", "dataset": "digit_scenes/multi"})
  )
  assert spec.num_classes == 11 and spec.class_names[:2] == ("background", "0")
  record = split("test")[0]
  assert record["labels"].shape == record["image"].shape[:2] == (128, 128)
  with pytest.raises(ValueError, match=r"'voc/2012' has no segmentation masks here: .*SBD"):
    sources.from_config(ConfigDict({"task": "segmentation", "dataset": "voc/2012"}))
  with pytest.raises(ValueError, match=r"'mnist5k' has no segmentation adapter"):
    sources.from_config(ConfigDict({"task": "segmentation", "dataset": "mnist5k"}))
  c = _config(8)
  c.input.crop_size = -1
  with pytest.raises(ValueError, match=r"input.crop_size: expected 0 .* received -1"):
    segmentation.input_fns(c, 11)
  # The model's logits must be a segmenter's.
  with pytest.raises(ValueError, match=r"expected the model's logits \[B, H, W, C\]"):
    segmentation.segmentation_loss((jnp.zeros((2, 11)), {}), {"labels": np.zeros((2,), int)})


@pytest.mark.parametrize(
  "labels, message",
  [
    (
      np.zeros((6, 5), np.uint8),
      r"scenes train record 1: 'labels' must be \[H, W\] = \[6, 6\], the image's size",
    ),
    (
      np.full((6, 6), 11, np.uint8),
      r"scenes train record 1: 'labels' has class id 11 at pixel \(y, x\) = \(0, 0\) \(36 "
      r"such pixels\); expected a class id in \[0, 11\) or 255",
    ),
    (np.full((6, 6), -1, np.int32), r"'labels' has class id -1"),
    (np.zeros((6, 6), np.float32), r"'labels' must be integers; received float32"),
  ],
)
def test_bad_records_are_errors_naming_the_record(labels, message):
  good = {"image": np.zeros((6, 6, 1), np.uint8), "labels": np.full((6, 6), 255, np.uint8)}
  source = data.SegmentationSource(
    [good, {"image": good["image"], "labels": labels}],
    lambda r: r,
    name="scenes train",
    num_classes=11,
  )
  assert source[0]["labels"].shape == (6, 6)  # all ignored is valid
  with pytest.raises(ValueError, match=message):
    source[1]
