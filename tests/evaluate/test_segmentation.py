"""The FCN paper's four segmentation numbers against a direct computation pixel by pixel."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from research.evaluate import segmentation


def _direct(labels, predictions, num_classes, ignore=255):
  """Section 5's formulas, counting pixel by pixel in Python."""
  n = np.zeros((num_classes, num_classes))
  for t, p in zip(labels.ravel().tolist(), predictions.ravel().tolist(), strict=True):
    if t != ignore:
      n[t, p] += 1
  t = n.sum(1)
  classes = [i for i in range(num_classes) if t[i] > 0]
  met = [i for i in range(num_classes) if t[i] + n[:, i].sum() > 0]
  iu = {i: n[i, i] / (t[i] + n[:, i].sum() - n[i, i]) for i in met}
  return n, {
    "pixel_accuracy": sum(n[i, i] for i in range(num_classes)) / t.sum(),
    "mean_accuracy": sum(n[i, i] / t[i] for i in classes) / len(classes),
    "mean_iu": sum(iu.values()) / len(met),
    "fw_iu": sum(t[i] * iu[i] for i in classes) / t.sum(),
  }


def test_four_metrics_equal_the_direct_computation_over_batches_with_ignored_pixels():
  rng = np.random.default_rng(0)
  c = 6
  # Class 5 never occurs but is predicted: IU 0; class 4 occurs rarely.
  labels = rng.choice([0, 1, 2, 3, 4, 255], size=(3, 24, 20), p=[0.4, 0.2, 0.15, 0.1, 0.05, 0.1])
  predictions = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, c, labels.shape))
  predictions = np.where(predictions == 255, 0, predictions)
  confusion = sum(
    np.asarray(jax.jit(segmentation.confusion_matrix, static_argnums=2)(lb, pr, c))
    for lb, pr in zip(labels, predictions, strict=True)
  )
  want_confusion, want = _direct(labels, predictions, c)
  np.testing.assert_array_equal(confusion, want_confusion)
  got = segmentation.metrics_from_confusion(confusion)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-12), key
  # The same numbers from the label maps in one call.
  assert segmentation.segmentation_metrics(predictions, labels, c) == pytest.approx(got, rel=1e-12)
  assert confusion[5].sum() == 0 and confusion[:, 5].sum() > 0


def test_padding_mask_and_bad_input():
  labels = np.array([[0, 1], [1, 255]])
  mask = np.array([[True, True], [False, True]])
  confusion = np.asarray(segmentation.confusion_matrix(labels, labels, 2, mask=mask))
  np.testing.assert_array_equal(confusion, [[1, 0], [0, 1]])
  assert segmentation.metrics_from_confusion(confusion)["mean_iu"] == 1.0
  with pytest.raises(ValueError, match="same shape"):
    segmentation.confusion_matrix(labels, labels[0], 2)
  with pytest.raises(ValueError, match="counts no pixels"):
    segmentation.metrics_from_confusion(np.zeros((2, 2)))
  with pytest.raises(ValueError, match=r"\[C, C\] matrix"):
    segmentation.metrics_from_confusion(np.zeros((2, 3)))
