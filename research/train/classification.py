"""The classification task's loss and evaluation metrics: plain functions of the model output."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def classification_loss(outputs, batch) -> dict:
  """Softmax cross-entropy; `outputs` = (logits [B, K], out), batch["label"] [B] int.

  Returns {"loss": mean cross-entropy, "accuracy": fraction correct}.
  """
  logits, _ = outputs
  labels = batch["label"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return {
    "loss": loss.mean(),
    "accuracy": (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean(),
  }
