"""Flax linen models, one file per family; configs name them by import path (`lenet.LeNet5`).

The detectors live in research.detection, one module each (`DETECTORS`), and configs name
them the same way (`faster_rcnn.FasterRCNN_ResNet50_FPN`)."""

from __future__ import annotations

import functools
import importlib
import pkgutil

import flax.linen as nn

# Modules of this package that hold no classifier: helpers, layers, and the necks.
_NOT_FAMILIES = ("fpn", "inputs", "layers", "norms", "summary")
# Modules of research.detection that hold detectors (the others hold their parts).
DETECTORS = ("fast_rcnn", "faster_rcnn", "mask_rcnn", "yolo")


def families() -> list[str]:
  """The model families: the modules of this package, e.g. ["lenet", ...]."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_FAMILIES)


def variants(module) -> list[str]:
  """The models of `module`: public Flax modules with a `num_classes`, and their partials.

  Building blocks (a ResNet's Bottleneck, say) are modules too, but not models.
  """

  def is_model(v):
    v = v.func if isinstance(v, functools.partial) else v
    return (
      isinstance(v, type)
      and issubclass(v, nn.Module)
      and "num_classes" in getattr(v, "__dataclass_fields__", {})
    )

  return sorted(k for k, v in vars(module).items() if not k.startswith("_") and is_model(v))


def resolve(name: str):
  """`"FAMILY.VARIANT"` (e.g. "lenet.LeNet5") -> the module class or partial.

  A name that does not resolve raises ValueError listing the valid ones.
  """
  family, _, variant = name.rpartition(".")
  if family in _NOT_FAMILIES:
    raise ValueError(
      f"model: {name!r} is not a model: research.models.{family} holds building blocks, "
      f"not a model family; expected 'FAMILY.VARIANT' with FAMILY one of {families()}, "
      "e.g. 'resnet.ResNet18'."
    )
  if family not in families() + list(DETECTORS):
    raise ValueError(
      f"model: unknown model {name!r}; expected 'FAMILY.VARIANT' with FAMILY one of "
      f"{families() + list(DETECTORS)}."
    )
  package = "research.detection" if family in DETECTORS else __name__
  module = importlib.import_module(f"{package}.{family}")
  valid = [
    v
    for v in variants(module)
    if getattr(module, v).__module__ == module.__name__
    or isinstance(getattr(module, v), functools.partial)
  ]
  if variant not in valid:
    raise ValueError(
      f"model: unknown model {name!r}; {family} has {[f'{family}.{v}' for v in valid]}."
    )
  return getattr(module, variant)


def check_num_classes(num_classes, model: str) -> None:
  """ValueError unless `num_classes` is an int >= 0.

  The classifiers' contract: num_classes=0 builds a backbone, the model without its
  classifier (no parameters for it), whose `__call__` returns `(None, out)`; a loss that
  needs logits must reject a None.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
    raise ValueError(
      f"{model}: num_classes must be an int >= 0 (0 builds the model without its "
      f"classifier); received num_classes={num_classes!r}."
    )
