"""Classification accuracy: per-batch sums on device, summarized on the host."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def eval_counts(outputs, batch) -> dict:
  """Sums over the valid rows (batch["mask"] [B] bool) of loss, top-1 and top-5 hits and count."""
  logits, _ = outputs
  labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  k = min(5, logits.shape[-1])
  topk = jnp.argsort(-logits, axis=-1)[:, :k]
  return {
    "loss_sum": (loss * mask).sum(),
    "correct": ((topk[:, 0] == labels) * mask).sum(),
    "correct_top5": ((topk == labels[:, None]).any(-1) * mask).sum(),
    "count": mask.sum(),
  }


def summarize(counts: dict, prefix: str = "test_") -> dict:
  """Sums from `eval_counts`, added over batches -> {prefix + accuracy, top5_accuracy, loss}."""
  n = float(counts["count"])
  if n == 0:
    raise ValueError("summarize: the evaluation saw no examples (count is 0).")
  return {
    f"{prefix}accuracy": float(counts["correct"]) / n,
    f"{prefix}top5_accuracy": float(counts["correct_top5"]) / n,
    f"{prefix}loss": float(counts["loss_sum"]) / n,
    f"{prefix}examples": int(n),
  }
