"""The benchmarks end to end on tiny settings: the rows they write, throughput.py's profile."""

import importlib.util
import json
import math
import os

import pytest

from research.train import host_memory

pytest.importorskip("torchvision")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(name):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(ROOT, "benchmarks", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_throughput_rows_and_profile(tmp_path, capsys):
  throughput = _module("throughput")
  out = tmp_path / "rows.json"
  argv = ["--models", "resnet.ResNet18", "--batch", "2", "--size", "64", "--steps", "1"]
  throughput.main([*argv, "--warmup", "1", "--json", str(out), "--profile"])
  (row,) = json.loads(out.read_text())
  assert row["model"] == "resnet.ResNet18" and row["batch"] == 2 and row["size"] == 64
  for key in ("flax_train_img_s", "torch_train_img_s", "flax_infer_img_s", "torch_infer_img_s"):
    assert row[key] > 0
  # ResNet-18 at 64x64: 2 * 0.15 GFLOP forward per image, about three times that per step.
  assert 0.5e9 < row["flax_train_flops_per_step"] / row["batch"] < 2e9
  assert row["flax_train_page_faults_per_step"] >= 0
  # main() alone, as tests call it, leaves malloc be; tests/conftest.py applies it.
  assert row["keep_freed_memory"] is host_memory.kept()
  printed = capsys.readouterr().out
  assert "one Flax training step of resnet.ResNet18" in printed
  assert "worker threads" in printed


def test_throughput_rejects_an_unknown_model():
  throughput = _module("throughput")
  with pytest.raises(ValueError, match=r"--models: expected names from .*received 'vgg.VGG17'"):
    throughput.main(["--models", "vgg.VGG17", "--batch", "1", "--size", "64"])


def test_detectors_rows(tmp_path):
  detectors = _module("detectors")
  out = tmp_path / "rows.json"
  argv = ["--batch", "1", "--size", "96", "--max-size", "128", "--steps", "1", "--warmup", "1"]
  detectors.main([*argv, "--json", str(out)])
  infer, train = json.loads(out.read_text())
  assert (infer["mode"], train["mode"]) == ("infer", "train")
  assert infer["image_hw"] == [96, 128] and infer["batch"] == 1
  for row in (infer, train):
    assert row["flax"] > 0 and row["torchvision"] > 0
  # The same converted weights and inputs: the RPN keeps the same proposals on both sides
  # (up to an NMS tie that float rounding may flip on another CPU).
  assert infer["flax_proposals"] == pytest.approx(infer["torch_proposals"], rel=0.02)
  assert math.isfinite(train["flax_loss"]) and math.isfinite(train["torch_loss"])
  assert 0 <= infer["flax_detections"] <= 100 and 0 <= infer["torch_detections"] <= 100
  # ResNet-50-FPN, RPN head and box head of 91 classes, batch norms frozen on both sides.
  assert train["trained_params"] == 41_755_286


def test_detectors_rejects_an_unknown_mode():
  detectors = _module("detectors")
  with pytest.raises(ValueError, match=r"--modes: expected infer, train .*received 'eval'"):
    detectors.main(["--modes", "eval"])


def test_fcn_bound_fits_score_maps_that_beat_the_prior_and_finer_strides_draw_more():
  """Two scenes, a short fit: a stride-4 map reaches a higher mean IU than a stride-32 one,
  and both beat all-background (mean IU = background's IU / 11 ~ 0.09)."""
  bound = _module("fcn_bound")
  rows = bound.main(["--strides", "32", "4", "--scenes", "2", "--steps", "60"])
  coarse, fine = rows
  assert coarse["stride"] == 32 and fine["stride"] == 4
  assert 0.1 < coarse["mean_iu"] < fine["mean_iu"] <= 1
  assert fine["pixel_accuracy"] > 0.98
