"""research.predict on a segmentation workdir: an FCN-32s of fcn_voc2012:runlocal32 trained
through the loop for one step segments scene PNGs of any size into a label map of the
original image's pixels, saved as a palette PNG whose class counts the JSON gives, and draws
the classes over the image; detection-only and segmentation-only arguments are errors or
ignored as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from research import predict, predict_segmentation
from research.train.tasks.segmentation import palette
from tests.conftest import ROOT, one_step, scene_pngs, subprocess_env

NUM_CLASSES = 11  # digit_scenes/multi: background and the ten digits
KEYS = {"image", "workdir", "step", "figure", "label_map", "classes"}


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
  """(workdir, scene PNG 128x128, the scene enlarged to 256x192) of a one-step run of
  fcn_voc2012:runlocal32, evaluated on one test scene."""
  from experiments import fcn_voc2012  # pylint: disable=import-outside-toplevel
  from research.train import loop  # pylint: disable=import-outside-toplevel

  root = tmp_path_factory.mktemp("predict_segmentation")
  c = one_step(
    fcn_voc2012.get_config("runlocal32"),
    {"type": "segmentation", "split": "test[:1]", "prefix": "test_", "every_steps": 0,
     "figure_images": 0},
  )  # fmt: skip
  workdir = str(root / "run")
  results = loop.train_and_evaluate(c, workdir)
  assert 0 <= results["test_mean_iu"] <= 1
  small, big = scene_pngs(root)
  return workdir, small, big


def _read_label_map(path: str) -> np.ndarray:
  with Image.open(path) as png:
    assert png.format == "PNG" and png.mode == "P"
    assert png.getpalette()[: 3 * NUM_CLASSES] == palette()[:NUM_CLASSES].ravel().tolist()
    return np.asarray(png)


def _check_result(result: dict, height: int, width: int) -> np.ndarray:
  """The saved label map, checked against the result's classes."""
  assert set(result) == KEYS
  assert json.loads(json.dumps(result)) == result
  assert json.loads(predict.to_json(result)) == result
  labels = _read_label_map(result["label_map"])
  assert labels.shape == (height, width) and labels.dtype == np.uint8
  assert labels.max() < NUM_CLASSES
  classes = result["classes"]
  assert sum(c["pixels"] for c in classes) == height * width
  counts = np.bincount(labels.ravel(), minlength=NUM_CLASSES)
  assert [c["label"] for c in classes] == sorted(
    np.flatnonzero(counts), key=lambda k: (-counts[k], k)
  )
  names = ["background", *map(str, range(10))]
  for c in classes:
    assert set(c) == {"label", "class_name", "pixels", "fraction"}
    assert c["pixels"] == counts[c["label"]] and c["class_name"] == names[c["label"]]
    assert c["fraction"] == pytest.approx(c["pixels"] / (height * width), abs=5e-5)
  with Image.open(result["figure"]) as figure:
    assert figure.format == "PNG"
  return labels


def test_predict_gives_a_label_map_of_the_original_image(segmented):
  workdir, small, big = segmented
  for path, (height, width) in ((small, (128, 128)), (big, (192, 256))):
    result = predict.predict(workdir, path)
    assert result["step"] == 1 and result["workdir"] == os.path.abspath(workdir)
    assert result["image"] == os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    figure = os.path.join(workdir, "figures", f"predict_{stem}.png")
    assert result["figure"] == os.path.abspath(figure)
    assert result["label_map"] == os.path.abspath(figure[: -len(".png")] + "_labels.png")
    labels = _check_result(result, height, width)
    segmenter = predict_segmentation.Segmenter.load(workdir, step=1)
    assert segmenter.channels == 1 and segmenter.class_names[0] == "background"
    np.testing.assert_array_equal(segmenter(predict.load_image(path, 1)), labels)
  # The score threshold means nothing here: ignored, not an error.
  assert (
    predict.predict(workdir, small, score_threshold=0.99)["classes"]
    == (predict.predict(workdir, small)["classes"])
  )


def test_several_classes_are_counted_saved_and_drawn(segmented, tmp_path, monkeypatch):
  # One step leaves every pixel background; random class scores give every class a region.
  workdir, _, big = segmented
  step, variables = predict.restore_variables(workdir)
  kernel = variables["params"]["score_fr"]["kernel"]
  noisy = np.random.default_rng(0).normal(0, 1, kernel.shape).astype(np.float32)
  variables = {**variables, "params": {**variables["params"]}}
  variables["params"]["score_fr"] = {**variables["params"]["score_fr"], "kernel": noisy}
  monkeypatch.setattr(predict_segmentation, "restore_variables", lambda *_: (step, variables))
  out, labels_path = str(tmp_path / "fig" / "scene.png"), str(tmp_path / "maps" / "scene.png")
  result = predict.predict(workdir, big, out=out, label_map=labels_path)
  assert result["figure"] == out and result["label_map"] == labels_path
  labels = _check_result(result, 192, 256)
  assert len(result["classes"]) >= 3
  segmenter = predict_segmentation.Segmenter.load(workdir)
  image = predict.load_image(big, 1)
  np.testing.assert_array_equal(segmenter(image), labels)
  logits = segmenter.logits(image)
  assert logits.shape == (192, 256, NUM_CLASSES) and logits.dtype == np.float32
  # The overlay leaves the background as it was and blends the classes' colours.
  blended = predict_segmentation.overlay(image, labels, background=0, alpha=0.5)
  grey = np.repeat(image, 3, axis=-1).astype(float)
  tinted = labels != 0
  np.testing.assert_array_equal(blended[~tinted], image[~tinted].repeat(3, -1))
  expected = np.round(0.5 * grey + 0.5 * palette()[labels]).astype(np.uint8)
  np.testing.assert_array_equal(blended[tinted], expected[tinted])
  with Image.open(out) as figure:
    assert figure.size[0] > figure.size[1]  # two panels side by side


def test_main_prints_json_and_the_module_runs(segmented, tmp_path, capsys):
  workdir, small, _ = segmented
  out = str(tmp_path / "drawn.png")
  capsys.readouterr()
  predict.main(
    [f"--workdir={workdir}", f"--image={small}", f"--out={out}", "--score-threshold=0.9"]
  )
  result = json.loads(capsys.readouterr().out)
  assert result["figure"] == out and result["label_map"] == str(tmp_path / "drawn_labels.png")
  _check_result(result, 128, 128)
  done = subprocess.run(
    [sys.executable, "-m", "research.predict", f"--workdir={workdir}", f"--image={small}"],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout)["classes"] == result["classes"]


def test_wrong_tasks_and_arguments_are_errors_naming_them(segmented, tmp_path, capsys):
  workdir, small, _ = segmented
  detection = tmp_path / "detection"
  detection.mkdir()
  (detection / "config.json").write_text(json.dumps({"task": "detection"}))
  with pytest.raises(ValueError, match=r"--label-map: only a segmentation run .*'detection'"):
    predict.predict(str(detection), small, label_map=str(tmp_path / "labels.png"))
  with pytest.raises(SystemExit) as exit_info:
    predict.main([f"--workdir={detection}", f"--image={small}", "--label-map=x.png"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith("error: --label-map: only a segmentation run")
  classifier = tmp_path / "classifier"
  classifier.mkdir()
  (classifier / "config.json").write_text(json.dumps({"task": "classification"}))
  with pytest.raises(ValueError, match=r"detector or segmenter.*holds a run of task 'classif"):
    predict.predict(str(classifier), small)
  with pytest.raises(ValueError, match=r"a trained detector, .* of task 'segmentation'"):
    predict.Detector.load(workdir)
  with pytest.raises(ValueError, match=r"a trained segmenter, .* of task 'detection'"):
    predict_segmentation.Segmenter.load(str(detection))
  with pytest.raises(ValueError, match=r"--label-map: expected a path other than the figure's"):
    predict.predict(workdir, small, out=str(tmp_path / "a.png"), label_map=str(tmp_path / "a.png"))
  segmenter = predict_segmentation.Segmenter.load(workdir)
  with pytest.raises(ValueError, match=r"image: expected uint8 \[H, W, 1\] .* \(8, 8, 3\)"):
    segmenter(np.zeros((8, 8, 3), np.uint8))
