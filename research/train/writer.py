"""Metrics to `metrics.jsonl` and TensorBoard event files (tensorboardX: no TensorFlow)."""

from __future__ import annotations

import json
import os
import sys

import jax


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch, where
  it is installed, only to accept torch tensors (2 s at the start of every run); the writer
  is given floats. A torch imported before stays; one imported later is torch itself."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Appends {"step": s, "split": ..., name: value} lines; only process 0 writes.

  Re-opening after a resume drops lines from steps beyond the restored step, so
  the file reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    if not self.active:
      return
    if os.path.exists(self.path):
      with open(self.path) as f:
        lines = [line for line in f if line.strip()]
      keep = [line for line in lines if json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(keep)
    self._tb = _summary_writer_class()(
      os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1
    )

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.active:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "split": split, **metrics}) + "\n")
    for name, value in metrics.items():
      self._tb.add_scalar(f"{split}/{name}", value, step)

  def flush(self) -> None:
    if self.active:
      self._tb.flush()

  def close(self) -> None:
    if self.active:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """The lines of `workdir/metrics.jsonl` as dicts."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
