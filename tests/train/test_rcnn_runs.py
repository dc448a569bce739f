"""R-CNN and Fast R-CNN through the one training loop on a COCO-format copy of digit scenes
(selective-search proposals cached beside it), then the lineage benchmark on their workdirs."""

from __future__ import annotations

import json
import os
import sys

from ml_collections import ConfigDict

from experiments import fast_rcnn_voc2007, rcnn_voc2007
from research.detection import rcnn
from research.train import loop
from tests.conftest import multi_test_scenes, write_coco_format

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _data(tmp_path) -> ConfigDict:
  scenes = multi_test_scenes(10)
  train = write_coco_format(str(tmp_path / "train"), scenes[:6])
  test = write_coco_format(str(tmp_path / "test"), scenes[6:], stem="held")
  return ConfigDict(
    {
      "annotation_file": train[0],
      "image_dir": train[1],
      "test_annotation_file": test[0],
      "test_image_dir": test[1],
    }
  )


def _tiny(c: ConfigDict, data: ConfigDict) -> ConfigDict:
  c.dataset = "coco_format"
  c.data = data
  c.init.path = ""  # the pretrained classifier is another experiment's run
  c.proposals.max_proposals = 40
  c.proposals.workers = 1
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.total_steps = 2
  return c


def test_rcnn_and_fast_rcnn_train_detect_and_enter_the_lineage_table(tmp_path):
  data = _data(tmp_path)
  c = _tiny(rcnn_voc2007.get_config("runlocal"), data)
  c.batch_size = 16
  c.eval_batch_size = 16
  c.evals[0].split = "test"
  c.evals[1].svm_images = 4
  c.evals[1].batch = 64
  rcnn_dir = str(tmp_path / "rcnn")
  results = loop.train_and_evaluate(c, rcnn_dir)
  for key in ("test_map50", "test_coco_ap", "test_accuracy"):
    assert 0.0 <= results[key] <= 1.0, (key, results[key])
  assert results["test_seconds_network_per_image"] > 0
  # The SVMs and regressors the evaluator trained are kept beside the checkpoints.
  classifiers = rcnn.Classifiers.load(os.path.join(rcnn_dir, rcnn.CLASSIFIERS_FILE))
  assert classifiers.svms.weights.shape[1] == 10 and classifiers.fc7_scale > 0
  assert os.path.isdir(os.path.join(os.path.dirname(data.annotation_file), "proposals"))

  f = _tiny(fast_rcnn_voc2007.get_config("runlocal"), data)
  f.batch_size = 2
  f.eval_batch_size = 4
  f.evals = [ConfigDict({"type": "detection_ap", "split": "test", "every_steps": 0})]
  fast_dir = str(tmp_path / "fast")
  loop.train_and_evaluate(f, fast_dir)

  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import lineage  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(os.path.join(ROOT, "benchmarks"))
  out = str(tmp_path / "lineage.json")
  rows = lineage.main(
    [
      *("--rcnn", rcnn_dir, "--fast-rcnn", fast_dir, "--faster-rcnn", str(tmp_path / "none")),
      *("--yolo", str(tmp_path / "none"), "--yolo-per-cell", ""),
      *("--images", "4", "--proposal-images", "1", "--svd-ranks", "16,8"),
      *("--json", out, "--plot", str(tmp_path / "lineage.png")),
      *("--errors", str(tmp_path / "errors.png")),
    ]
  )
  assert [r["detector"] for r in rows] == ["R-CNN", "Fast R-CNN", "Fast R-CNN, SVD 16/8"]
  # The benchmark's R-CNN detects as the run's evaluator did (the same classifiers file).
  assert abs(rows[0]["map50"] - results["test_map50"]) < 1e-9
  for row in rows:
    assert row["images"] == 4 and row["proposals_s"] > 0 and row["network_s"] > 0
    # The error analysis of each detector's top detections (None where it counted none).
    counted = [v for v in row["errors"].values() if v is not None]
    assert not counted or abs(sum(counted) - 1) < 1e-9
    assert row["total_s"] >= row["proposals_s"] + row["network_s"]
  with open(out) as fp:
    assert json.load(fp) == {"digit_scenes": rows, "paper_scale": []}
  assert os.path.getsize(tmp_path / "lineage.png") > 0
  assert os.path.getsize(tmp_path / "errors.png") > 0
