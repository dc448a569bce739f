"""The loop end to end on mnist5k: outputs, determinism, resume after SIGKILL, NaN stop."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from research.train.loop import train_and_evaluate
from research.train.writer import read_metrics
from tests.conftest import ROOT, sigkill_after_checkpoint, subprocess_env


def test_a_run_writes_every_output_of_the_contract(small_config, tmp_path):
  results = train_and_evaluate(small_config, str(tmp_path))
  for name in ("config.json", "metrics.jsonl", "results.json", "figures/learning_curves.png"):
    assert (tmp_path / name).is_file(), name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["param_fingerprint"] == results["param_fingerprint"]
  assert set(saved) >= {"test_accuracy", "wall_seconds", "param_fingerprint"}
  assert saved["test_examples"] == 1000 and saved["param_count"] == 61_706
  # 40 steps of batch 32 already beat chance (0.1) by far.
  assert saved["test_accuracy"] > 0.5
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows if r["split"] == "train"] == [10, 20, 30, 40]
  assert json.loads((tmp_path / "config.json").read_text())["model"] == "lenet.LeNet5"


def test_same_seed_same_fingerprint_other_seed_other(small_config, tmp_path):
  small_config.total_steps = small_config.checkpoint_every_steps = 15
  a = train_and_evaluate(small_config, str(tmp_path / "a"))
  b = train_and_evaluate(small_config, str(tmp_path / "b"))
  small_config.seed = 1
  c = train_and_evaluate(small_config, str(tmp_path / "c"))
  assert a["param_fingerprint"] == b["param_fingerprint"] != c["param_fingerprint"]


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(small_config, tmp_path, caplog):
  done = train_and_evaluate(small_config, str(tmp_path))
  for root, _, files in os.walk(tmp_path / "checkpoints" / "40"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\x00 not a checkpoint")
  again = train_and_evaluate(small_config, str(tmp_path))
  assert "checkpoint 40" in caplog.text and "cannot be restored" in caplog.text
  assert again["resumed_from_step"] == 20
  assert again["param_fingerprint"] == done["param_fingerprint"]
  assert (tmp_path / "checkpoints_corrupted" / "40").is_dir()  # set aside, not deleted


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(small_config, tmp_path):
  train_and_evaluate(small_config, str(tmp_path))
  small_config.total_steps = 80
  small_config.input.value_range = (0.0, float("nan"))  # every image becomes NaN
  with pytest.raises(FloatingPointError, match=r"loss is nan at step 41.*checkpoint \(40\)"):
    train_and_evaluate(small_config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]


def _cli(workdir, *overrides):
  return [
    sys.executable,
    "-m",
    "research.main",
    "--config=experiments/lenet5_mnist.py",
    f"--workdir={workdir}",
    "--config.total_steps=150",
    "--config.batch_size=32",
    "--config.checkpoint_every_steps=30",
    "--config.log_every_steps=10",
    "--config.eval_every_steps=0",
    *overrides,
  ]


def test_sigkill_mid_training_then_rerun_ends_with_the_same_fingerprint(tmp_path):
  env = subprocess_env(JAX_PLATFORMS="cpu")
  # The uninterrupted run is independent of the killed one: both start together.
  whole_log = open(tmp_path / "whole.log", "w")  # noqa: SIM115 (closed after the run)
  whole_run = subprocess.Popen(
    _cli(tmp_path / "whole"), cwd=ROOT, env=env, stdout=whole_log, stderr=subprocess.STDOUT
  )

  killed = tmp_path / "killed"
  sigkill_after_checkpoint(_cli(killed), killed, env=env, min_step=60)

  subprocess.run(_cli(killed), cwd=ROOT, env=env, check=True, capture_output=True)
  whole_run.wait()
  whole_log.close()
  assert whole_run.returncode == 0, (tmp_path / "whole.log").read_text()[-3000:]
  whole = json.loads((tmp_path / "whole" / "results.json").read_text())
  resumed = json.loads((killed / "results.json").read_text())
  assert 60 <= resumed["resumed_from_step"] < 150
  assert resumed["param_fingerprint"] == whole["param_fingerprint"]
  assert resumed["test_accuracy"] == whole["test_accuracy"]
  # metrics.jsonl reads as one run: each train step logged once.
  steps = [r["step"] for r in read_metrics(str(killed)) if r["split"] == "train"]
  np.testing.assert_array_equal(steps, np.arange(10, 151, 10))


def test_pmap_run_resumes_and_matches_jit(small_config, tmp_path):
  small_config.optimizer.schedule = "constant"  # so a longer second leg keeps the same rates
  jit = train_and_evaluate(small_config, str(tmp_path / "jit"))
  small_config.parallelism = "pmap"
  small_config.total_steps = 20
  train_and_evaluate(small_config, str(tmp_path / "pmap"))
  small_config.total_steps = 40
  pmap = train_and_evaluate(small_config, str(tmp_path / "pmap"))
  assert pmap["resumed_from_step"] == 20
  assert pmap["param_fingerprint"] == jit["param_fingerprint"]
  assert pmap["test_accuracy"] == jit["test_accuracy"]


def test_train_split_trains_and_evaluates_on_part_of_the_training_set(small_config, tmp_path):
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel

  small_config.train_split = "train[:64]"
  small_config.total_steps = 4
  small_config.checkpoint_every_steps = 4
  small_config.evals = [ConfigDict({"type": "accuracy", "split": "train", "every_steps": 0})]
  results = train_and_evaluate(small_config, str(tmp_path))
  assert results["train_examples"] == 64  # "train" names the config's training split
