"""Semantic segmentation's four numbers (Long, Shelhamer and Darrell 2015, Section 5).

With n_ij the pixels of class i predicted as class j and t_i = sum_j n_ij the pixels of
class i:

    pixel accuracy            sum_i n_ii / sum_i t_i
    mean accuracy             mean_i n_ii / t_i
    mean IU                   mean_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency weighted IU     (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

all from one confusion matrix accumulated over a whole split (not averaged per image).
Pixels labelled `ignore` (VOC's 255: object boundaries and "difficult" regions) count
nowhere. As in the authors' evaluation code (score.py), a class without pixels (t_i = 0)
has no accuracy and is left out of the mean accuracy; its IU is 0 when it is predicted
somewhere and undefined (left out of the mean IU) when it is not.

`confusion_matrix` runs under jit (a device-side sum per batch) and `metrics_from_confusion`
takes the summed matrix on the host; `segmentation_metrics` does both for label maps in hand.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

IGNORE = 255  # PASCAL VOC's label for boundaries and difficult regions


def confusion_matrix(
  labels, predictions, num_classes: int, *, ignore_label: int = IGNORE, mask=None
):
  """labels, predictions: int [...] of the same shape (class ids; labels may hold `ignore`);
  mask: optional bool [...] of pixels to count (padding False) -> int32 [C, C], rows the
  true class, columns the predicted one. A label outside [0, C) other than `ignore` is not
  counted here: check the data (research.data) for those. Labels equal to `ignore_label`
  count nowhere."""
  labels = jnp.asarray(labels).astype(jnp.int32)
  predictions = jnp.asarray(predictions).astype(jnp.int32)
  if labels.shape != predictions.shape:
    raise ValueError(
      f"confusion_matrix: labels and predictions must have the same shape; received "
      f"{labels.shape} and {predictions.shape}."
    )
  keep = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  keep &= (predictions >= 0) & (predictions < num_classes)
  if mask is not None:
    keep &= jnp.asarray(mask, bool)
  index = jnp.where(keep, labels * num_classes + predictions, 0)
  counts = (
    jnp.zeros(num_classes * num_classes, jnp.int32)
    .at[index.ravel()]
    .add(keep.ravel().astype(jnp.int32))
  )
  return counts.reshape(num_classes, num_classes)


def segmentation_metrics(
  predictions, labels, num_classes: int, *, ignore_label: int = IGNORE
) -> dict[str, float]:
  """predictions, labels: int [N, H, W] (labels may hold `ignore_label`) -> {"pixel_accuracy",
  "mean_accuracy", "mean_iu", "fw_iu"} over all the pixels together (module docstring)."""
  return metrics_from_confusion(
    confusion_matrix(labels, predictions, num_classes, ignore_label=ignore_label)
  )


def metrics_from_confusion(confusion) -> dict[str, float]:
  """A [C, C] confusion matrix summed over a split (rows true, columns predicted) ->
  {"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"} (see the module docstring)."""
  n = np.asarray(confusion, np.float64)
  if n.ndim != 2 or n.shape[0] != n.shape[1]:
    raise ValueError(f"metrics_from_confusion: expected a [C, C] matrix; received {n.shape}.")
  total = n.sum()
  if total == 0:
    raise ValueError("metrics_from_confusion: the confusion matrix counts no pixels.")
  diagonal, truth, predicted = np.diag(n), n.sum(1), n.sum(0)
  present, union = truth > 0, truth + predicted - diagonal
  met = union > 0  # present or predicted
  iu = diagonal[met] / union[met]
  return {
    "pixel_accuracy": float(diagonal.sum() / total),
    "mean_accuracy": float(np.mean(diagonal[present] / truth[present])),
    "mean_iu": float(np.mean(iu)),
    "fw_iu": float((truth[present] * diagonal[present] / union[present]).sum()) / float(total),
  }
