"""Every experiment module: each variant builds a config whose model, data and optimizer resolve."""

import glob
import importlib
import os

import pytest

from research import models
from research.data import datasets, segmentation
from research.train import loop, optimizers, tasks
from tests.conftest import ROOT

MODULES = sorted(
  os.path.splitext(os.path.basename(p))[0]
  for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
  if not os.path.basename(p).startswith("_")
)
VARIANTS = [(m, v) for m in MODULES for v in (None, "full", "runlocal")]


@pytest.mark.parametrize("name, arg", VARIANTS)
def test_variants_resolve(name, arg):
  module = importlib.import_module(f"experiments.{name}")
  try:
    config = module.get_config(arg)
  except ValueError as e:
    assert "expected variant" in str(e)
    return
  if config.get("task") == "segmentation":  # its classes: background and the objects
    spec = segmentation.segmentation_spec(config.dataset)
  else:
    spec = datasets.get_spec(config.dataset)
  model = models.resolve(config.model)(num_classes=spec.num_classes, **config.model_kwargs)
  assert model.num_classes == spec.num_classes
  assert callable(tasks.resolve(config.get("task", "classification")).loss_fn(config))
  optimizers.make_optimizer(config.optimizer, config.total_steps)
  assert config.total_steps >= config.checkpoint_every_steps >= 1
  if config.get("analysis"):
    assert callable(loop.resolve_analysis(config.analysis))
  assert module.__doc__ and "python -m research.main --config=experiments/" in module.__doc__


@pytest.mark.parametrize("name", MODULES)
def test_every_experiment_has_an_offline_variant(name):
  module = importlib.import_module(f"experiments.{name}")
  offline = []
  for arg in (None, "runlocal"):
    try:
      offline.append(datasets.get_spec(module.get_config(arg).dataset).builder is not None)
    except ValueError:
      pass
  assert any(offline)
