"""benchmarks/throughput.py end to end on a tiny setting: the rows it writes and its profile."""

import importlib.util
import json
import os

import pytest

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
  printed = capsys.readouterr().out
  assert "one Flax training step of resnet.ResNet18" in printed
  assert "worker threads" in printed


def test_throughput_rejects_an_unknown_model():
  throughput = _module("throughput")
  with pytest.raises(ValueError, match=r"--models: expected names from .*received 'vgg.VGG17'"):
    throughput.main(["--models", "vgg.VGG17", "--batch", "1", "--size", "64"])
