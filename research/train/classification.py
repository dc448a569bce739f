"""The classification task's loss and evaluation metrics: plain functions of the model output."""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import optax

from research import models


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


def resolve_loss(name: str):
  """ "classification" -> classification_loss; "FAMILY.NAME_loss" -> the loss beside a model's
  head (e.g. "googlenet.googlenet_loss", which adds the auxiliary classifiers' terms)."""
  if name == "classification":
    return classification_loss
  family, _, fn = name.rpartition(".")
  if family in models.families():
    module = importlib.import_module(f"research.models.{family}")
    if fn.endswith("_loss") and callable(getattr(module, fn, None)):
      return getattr(module, fn)
  losses = ["classification"] + [
    f"{f}.{k}"
    for f in models.families()
    for k, v in vars(importlib.import_module(f"research.models.{f}")).items()
    if k.endswith("_loss") and callable(v)
  ]
  raise ValueError(f"loss: unknown loss {name!r}; expected one of {losses}.")
