"""What differs per task, for the one training loop (`research.train.loop`).

`config.task` names a module of this package. A task module supplies:

    input_fns(config, num_classes) -> Inputs   the pipeline's transforms, train and eval
    loss_fn(config) -> loss(outputs, batch) -> {"loss": scalar, ...}
    model_kwargs(batch, *, train) -> dict      what the model needs besides the images
    EVALUATORS: {type: Evaluator class}        the `config.evals` types it offers
    default_evals(config) -> [ConfigDict]      the evaluators when the config names none
    figures(workdir) -> [PNG paths]            drawn from metrics.jsonl after the run

`classification` is the first task; detection and segmentation follow the same shape.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType


@dataclasses.dataclass(frozen=True)
class Inputs:
  """A task's input pipeline pieces (see `research.data.pipeline`).

  transform(batch) -> batch: the deterministic batch transform (both splits).
  random_transform(batch, rngs) -> batch: training-only augmentation, or None.
  train_record(record, rng) / eval_record(record): per-record crops for images of
    varying size, or None.
  """

  transform: Callable
  random_transform: Callable | None = None
  train_record: Callable | None = None
  eval_record: Callable | None = None


def names() -> list[str]:
  """The tasks: the modules of this package."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def resolve(name: str) -> ModuleType:
  """`"classification"` -> research.train.tasks.classification; ValueError listing the valid ones."""
  if name not in names():
    raise ValueError(f"task: unknown task {name!r}; expected one of {names()}.")
  return importlib.import_module(f"{__name__}.{name}")
