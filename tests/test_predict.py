"""research.predict: a Mask R-CNN (a Faster R-CNN with a mask branch) trained through the loop
on digit_scenes/multi (one step) detects on scene PNGs, prints JSON with boxes and masks in
the original image's pixels and draws them; bad workdirs, images and arguments are errors
naming them."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from research import predict
from research.data import datasets
from tests.conftest import ROOT, one_step, scene_pngs, subprocess_env

KEYS = {"box", "label", "class_name", "score"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, scene PNG 128x128, scene PNG enlarged to 256x192) of a one-step run of
  mask_rcnn_coco:runlocal (no pretraining), evaluated on one test scene (box and mask AP)."""
  from experiments import mask_rcnn_coco  # pylint: disable=import-outside-toplevel
  from research.train import loop  # pylint: disable=import-outside-toplevel

  root = tmp_path_factory.mktemp("predict")
  c = mask_rcnn_coco.get_config("runlocal")
  c.init.path = ""  # the pretrained classifier is another experiment's run
  one_step(c, {"type": "detection_ap", "split": "test[:1]", "prefix": "test_", "every_steps": 0})
  workdir = str(root / "run")
  results = loop.train_and_evaluate(c, workdir)
  assert 0 <= results["test_mask_ap"] <= 1  # masks went through the task and the evaluator
  small, big = scene_pngs(root)
  return workdir, small, big


def _check_detections(detections, width, height, threshold):
  for d in detections:
    assert set(d) == KEYS | {"mask"}, d
    mask = predict.decode_mask(d["mask"])
    assert mask.shape == (height, width) and mask.dtype == bool, d
    assert predict.encode_mask(mask) == d["mask"]
    x1, y1, x2, y2 = d["box"]
    assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height, d
    assert 0 <= d["label"] < 10 and d["class_name"] == str(d["label"]), d  # digits
    assert threshold <= d["score"] <= 1, d
  scores = [d["score"] for d in detections]
  assert scores == sorted(scores, reverse=True)


def test_predict_gives_boxes_in_the_original_image_and_draws_them(trained):
  workdir, _, big = trained
  result = predict.predict(workdir, big, score_threshold=0.0)
  assert json.loads(json.dumps(result)) == result
  assert json.loads(predict.to_json(result)) == result
  assert result["step"] == 1
  assert result["image"] == os.path.abspath(big)
  detections = result["detections"]
  assert detections  # RoI heads keep up to 50 above their own 0.05
  _check_detections(detections, 256, 192, 0.0)
  # Boxes are the 256x192 image's pixels, not the 128x96 ones the model saw.
  assert max(max(d["box"][0::2]) for d in detections) > 128
  figure = os.path.join(workdir, "figures", "predict_scene_big.png")
  assert result["figure"] == os.path.abspath(figure)
  with Image.open(figure) as image:
    assert image.format == "PNG"
    assert image.size == (600, 450)  # the longer side 6 inches at dpi 100, aspect kept


def test_main_prints_json_of_the_detections_above_the_threshold(trained, tmp_path, capsys):
  workdir, small, _ = trained
  out = str(tmp_path / "drawn" / "scene.png")
  detector = predict.Detector.load(workdir, step=1)
  assert detector.step == 1 and detector.channels == 1
  everything = detector(predict.load_image(small, detector.channels), score_threshold=0.0)
  threshold = float(np.median([d["score"] for d in everything]))
  # An RGB (or palette, RGBA) file of a greyscale data set is read as grey, as its records are.
  rgb = str(tmp_path / "scene_rgb.png")
  Image.open(small).convert("RGB").save(rgb)
  assert predict.load_image(rgb, 1).shape == (128, 128, 1)
  assert predict.predict(workdir, rgb, score_threshold=0.0)["detections"] == everything
  capsys.readouterr()
  predict.main(
    [
      f"--workdir={workdir}",
      f"--image={small}",
      f"--out={out}",
      f"--score-threshold={threshold}",
      "--step=1",
    ]
  )
  result = json.loads(capsys.readouterr().out)
  assert result["step"] == 1 and result["figure"] == os.path.abspath(out)
  assert result["score_threshold"] == threshold
  _check_detections(result["detections"], 128, 128, threshold)
  assert result["detections"] == [d for d in everything if d["score"] >= threshold]
  assert 0 < len(result["detections"]) < len(everything)
  with Image.open(out) as image:
    assert image.format == "PNG" and image.size == (600, 600)


def test_to_original_scales_each_axis_back_and_clips():
  # A 300x200 (H x W) image resized to 128x85 inside the canvas.
  boxes = np.array([[10.0, 20.0, 42.5, 64.0], [80.0, 120.0, 85.0, 128.0]])
  out = predict.to_original(boxes, (128, 85), (300, 200))
  np.testing.assert_allclose(
    out[0], [10 * 200 / 85, 20 * 300 / 128, 42.5 * 200 / 85, 64 * 300 / 128]
  )
  np.testing.assert_allclose(out[1], [80 * 200 / 85, 120 * 300 / 128, 200, 300])


def test_class_names_come_from_the_spec_else_tfds_metadata_else_numbers():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  config = ConfigDict({"dataset": "digit_scenes/multi"})
  assert predict.class_names(config, datasets.get_spec("digit_scenes/multi"), 10) == [
    str(i) for i in range(10)
  ]
  named = datasets.DatasetSpec("mine", (None, None, 3), 3, class_names=("cat", "dog", "cow"))
  assert predict.class_names(config, named, 3) == ["cat", "dog", "cow"]
  voc_like = tfds.features.FeaturesDict(
    {
      "objects": tfds.features.Sequence(
        {"bbox": tfds.features.BBoxFeature(), "label": tfds.features.ClassLabel(names=["a", "b"])}
      )
    }
  )
  assert predict._label_names(voc_like) == ["a", "b"]
  numbered = tfds.features.FeaturesDict({"label": tfds.features.ClassLabel(num_classes=3)})
  assert predict._label_names(numbered) is None


def test_bad_workdirs_are_errors_naming_them(trained, tmp_path):
  workdir, small, _ = trained
  with pytest.raises(FileNotFoundError, match=r"--workdir: .* does not exist"):
    predict.predict(str(tmp_path / "missing"), small)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"--workdir: .*config\.json; .* has none"):
    predict.predict(str(empty), small)
  unsaved = tmp_path / "unsaved"
  unsaved.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), unsaved / "config.json")
  with pytest.raises(FileNotFoundError, match=r"--workdir: expected a checkpoint"):
    predict.predict(str(unsaved), small)
  (unsaved / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match=r"--workdir: expected a checkpoint .* found none"):
    predict.predict(str(unsaved), small)
  classifier = tmp_path / "classifier"
  classifier.mkdir()
  (classifier / "config.json").write_text(json.dumps({"task": "classification"}))
  with pytest.raises(ValueError, match=r"predict runs a trained detector or segmenter.*'classif"):
    predict.predict(str(classifier), small)
  with pytest.raises(FileNotFoundError, match=r"--step: expected one of .*\[1\]; received 7"):
    predict.predict(workdir, small, step=7)
  broken = tmp_path / "broken"
  shutil.copytree(workdir, broken)
  shutil.rmtree(broken / "checkpoints" / "1" / "state" / "d")  # the arrays' data
  with pytest.raises(ValueError, match=r"--workdir: none of the checkpoints \[1\] .* can be read"):
    predict.predict(str(broken), small)
  with pytest.raises(ValueError, match=r"--step: checkpoint 1 of .* cannot be read"):
    predict.predict(str(broken), small, step=1)


def test_bad_images_and_thresholds_are_errors_naming_them(trained, tmp_path):
  workdir, _, _ = trained
  with pytest.raises(FileNotFoundError, match=r"--image: expected an image file.*does not exist"):
    predict.predict(workdir, str(tmp_path / "missing.png"))
  bad = tmp_path / "bad.png"
  bad.write_text("not a PNG")
  with pytest.raises(ValueError, match=r"--image: expected an image file PIL can read"):
    predict.predict(workdir, str(bad))
  with pytest.raises(ValueError, match=r"--score-threshold: expected a finite number"):
    predict.predict(workdir, str(bad), score_threshold=math.nan)


def test_the_module_runs_from_the_command_line_and_exits_2_on_errors(tmp_path):
  command = [sys.executable, "-m", "research.predict"]
  env = subprocess_env()
  missing = str(tmp_path / "missing")
  done = subprocess.run(
    [*command, f"--workdir={missing}", "--image=x.png"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 2
  assert done.stderr.startswith("error: --workdir:") and missing in done.stderr
  done = subprocess.run(
    [*command, f"--workdir={missing}"], cwd=ROOT, env=env, capture_output=True, text=True
  )
  assert done.returncode == 2 and "--image" in done.stderr  # argparse: a required argument
