"""The detection task through the one training loop: a Faster R-CNN trains on a COCO-format
copy of digit_scenes/multi and is evaluated with DetectionAP; bad task settings are errors
before training."""

from __future__ import annotations

import json
import os

import pytest
from ml_collections import ConfigDict

from experiments import faster_rcnn_voc2007
from research.train import loop, tasks
from research.train.writer import read_metrics
from tests.conftest import multi_test_scenes, write_coco_format


def _config() -> ConfigDict:
  c = faster_rcnn_voc2007.get_config("runlocal")
  c.init.path = ""  # the pretrained classifier is another experiment's run
  c.batch_size = 2
  c.eval_batch_size = 10
  c.total_steps = 4
  c.log_every_steps = 2
  c.checkpoint_every_steps = 4
  c.evals = [
    ConfigDict({"type": "detection_ap", "split": "test[:20]", "prefix": "test_", "every_steps": 0})
  ]
  return c


def test_a_coco_format_run_is_evaluated_and_resumed_under_pmap_matches_jit(tmp_path):
  """A user's COCO-format data set trains from the config alone, is evaluated by DetectionAP
  and writes its losses, results and figure; the anchor and RoI samples come from (seed,
  step, image index), so a run stopped at step 2 and resumed under pmap ends where an
  uninterrupted jit run does, bit for bit. (digit_scenes/multi from TFDS trains in
  test_detection_runs.py.)"""
  scenes = multi_test_scenes(12)
  train = write_coco_format(str(tmp_path / "train"), scenes[:8])
  test = write_coco_format(str(tmp_path / "test"), scenes[8:], stem="held")
  c = _config()
  c.dataset = "coco_format"
  c.data = ConfigDict(
    {
      "annotation_file": train[0],
      "image_dir": train[1],
      "test_annotation_file": test[0],
      "test_image_dir": test[1],
    }
  )
  c.optimizer.schedule = "constant"  # so the longer second leg keeps the same rates
  c.checkpoint_every_steps = 2
  c.evals[0].split = "test"
  workdir = str(tmp_path / "jit")
  jit = loop.train_and_evaluate(c, workdir)
  for key in ("test_map50", "test_coco_ap", "test_coco_ap50", "test_coco_ar100"):
    assert 0.0 <= jit[key] <= 1.0, (key, jit[key])
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["test_map50"] == jit["test_map50"]
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  assert [r["step"] for r in train] == [2, 4]
  losses = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
  assert all(train[-1][key] >= 0 for key in losses)
  assert abs(train[-1]["loss"] - sum(train[-1][k] for k in losses)) < 1e-4
  assert os.path.getsize(os.path.join(workdir, "figures", "learning_curves.png")) > 0
  c.parallelism = "pmap"
  c.total_steps = 2
  loop.train_and_evaluate(c, str(tmp_path / "pmap"))
  c.total_steps = 4
  pmap = loop.train_and_evaluate(c, str(tmp_path / "pmap"))
  assert pmap["resumed_from_step"] == 2
  assert pmap["param_fingerprint"] == jit["param_fingerprint"]
  assert pmap["test_map50"] == jit["test_map50"]


def test_bad_detection_settings_are_errors_naming_them():
  detection = tasks.resolve("detection")
  c = _config()
  c.loss = "classification"
  with pytest.raises(ValueError, match="loss: the detection task"):
    detection.loss_fn(c)
  c = _config()
  c.dataset = "mnist5k"
  with pytest.raises(ValueError, match="dataset: the detection task needs one of"):
    detection.input_fns(c, 10)
