"""The four "understanding CNNs" experiments end to end on a briefly trained ZFNet-style
network: the analysis hook runs after training, results.json gets their numbers and
the figures are written. (The numbers the experiments reach are in their docstrings.)"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments import (
  class_model_visualization,
  zfnet_deconvnet,
  zfnet_invariance,
  zfnet_occlusion,
)
from research.train import loop
from research.train.tasks import classification


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """zfnet_occlusion:runlocal cut to 30 steps and 12 held-out scenes, run by the loop."""
  workdir = str(tmp_path_factory.mktemp("zfnet_occlusion"))
  c = zfnet_occlusion.get_config("runlocal")
  c.total_steps = 30
  c.optimizer.warmup_steps = 5
  c.checkpoint_every_steps = 30
  c.log_every_steps = 10
  c.analysis_images = 12
  c.occlusion.stride = 8
  c.occlusion.figure_scenes = 2
  results = loop.train_and_evaluate(c, workdir)
  return c, workdir, results


def test_occlusion_experiment_writes_its_numbers(trained):
  _, workdir, results = trained
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["occlusion_scenes"] == 12
  assert 0.0 <= saved["occlusion_localization_rate"] <= 1.0
  assert saved["occlusion_localization_rate"] == results["occlusion_localization_rate"]
  assert saved["wall_seconds"] >= saved["occlusion_seconds"] > 0
  assert os.path.getsize(os.path.join(workdir, "figures", "occlusion.png")) > 0


def _model_and_variables(config, workdir):
  """The trained model back from the run's checkpoint."""
  import jax

  from research import models
  from research.data import datasets
  from research.train import optimizers
  from research.train.checkpoints import Checkpointer
  from research.train.state import create_train_state

  spec = datasets.get_spec(config.dataset)
  model = models.resolve(config.model)(num_classes=spec.num_classes, **config.model_kwargs)
  tx = optimizers.make_optimizer(config.optimizer, config.total_steps)
  state = create_train_state(model, tx, seed=config.seed, input_shape=(1, *spec.image_shape))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  _, state, _ = ckpt.restore_latest(abstract)
  ckpt.close()
  transform = classification.input_fns(config, spec.num_classes).transform
  return model, {"params": state.params, "batch_stats": state.batch_stats}, transform


def test_deconvnet_invariance_and_class_model_analyses(trained, tmp_path):
  config, workdir, _ = trained
  model, variables, transform = _model_and_variables(config, workdir)

  c = zfnet_deconvnet.get_config("runlocal")
  c.analysis_images = 12
  c.deconvnet.maps = 2
  c.deconvnet.top = 4
  out = zfnet_deconvnet.analyze(model, variables, c, str(tmp_path), transform)
  assert out["deconvnet_projections"] == 5 * 2 * 4
  np.testing.assert_allclose(out["deconvnet_inside_energy"], 1.0, atol=1e-5)

  c = zfnet_invariance.get_config("runlocal")
  c.invariance.images = 2
  out = zfnet_invariance.analyze(model, variables, c, str(tmp_path), transform)
  for kind in zfnet_invariance.TRANSFORMS:
    assert out[f"invariance_ratio_{kind}"] > 0

  c = class_model_visualization.get_config("runlocal")
  c.analysis_images = 12
  c.class_model.steps = 5
  c.saliency.figure_scenes = 2
  out = class_model_visualization.analyze(model, variables, c, str(tmp_path), transform)
  assert 0.0 <= out["class_model_confidence"] <= 1.0
  assert out["saliency_scenes"] == 12
  assert 0.0 <= out["pointing_game"] <= 1.0 and 0.0 <= out["saliency_box_iou50"] <= 1.0
  for name in ("deconvnet", "invariance", "class_models", "saliency"):
    assert os.path.getsize(os.path.join(str(tmp_path), "figures", f"{name}.png")) > 0


def test_transforms_keep_the_identity():
  image = (np.random.default_rng(0).random((64, 64, 1)) * 255).astype(np.uint8)
  for kind in ("translation", "rotation"):
    np.testing.assert_array_equal(zfnet_invariance.transformed(image, kind, 0.0), image)
  np.testing.assert_array_equal(zfnet_invariance.transformed(image, "scale", 1.0), image)
  shifted = zfnet_invariance.transformed(image, "translation", 3.0)
  np.testing.assert_array_equal(shifted[3:], image[:-3])
  with pytest.raises(ValueError, match="kind: expected one of"):
    zfnet_invariance.transformed(image, "shear", 1.0)
