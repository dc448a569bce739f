"""A Faster R-CNN run through `python -m research.main` loses nothing to a SIGKILL, and two
processes through jax.distributed train it exactly as one process with two devices does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from research.train.writer import read_metrics
from tests.conftest import ROOT, subprocess_env

# The :runlocal detector (ResNet-18/4 FPN on digit_scenes/multi) without its pretraining,
# 20 steps of 2 scenes, evaluated on 20 test scenes.
CONFIG = textwrap.dedent(
  """
  from ml_collections import ConfigDict

  from experiments import faster_rcnn_voc2007


  def get_config(arg=None):
    c = faster_rcnn_voc2007.get_config("runlocal")
    c.init.path = ""
    c.batch_size = 2
    c.eval_batch_size = 10
    c.total_steps = 20
    c.log_every_steps = 4
    c.checkpoint_every_steps = 4
    c.optimizer.warmup_steps = 0
    c.evals = [ConfigDict({"type": "detection_ap", "split": "test[:20]", "prefix": "test_"})]
    return c
  """
)


def _cli(tmp_path, workdir, *flags):
  config = tmp_path / "detector_config.py"
  if not config.exists():
    config.write_text(CONFIG)
  return [
    sys.executable,
    "-m",
    "research.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *flags,
  ]


def _checkpoints(workdir) -> list[int]:
  # Complete checkpoints only: one being written is "N.orbax-checkpoint-tmp".
  path = workdir / "checkpoints"
  return sorted(int(s) for s in os.listdir(path) if s.isdigit()) if path.is_dir() else []


def test_a_sigkilled_detection_run_resumes_to_the_same_fingerprint(tmp_path):
  env = subprocess_env(JAX_PLATFORMS="cpu")
  whole_log = open(tmp_path / "whole.log", "w")  # noqa: SIM115 (closed after the run)
  whole_run = subprocess.Popen(
    _cli(tmp_path, tmp_path / "whole"),
    cwd=ROOT,
    env=env,
    stdout=whole_log,
    stderr=subprocess.STDOUT,
  )
  killed = tmp_path / "killed"
  proc = subprocess.Popen(
    _cli(tmp_path, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None and not _checkpoints(killed):
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "results.json").exists()

  subprocess.run(_cli(tmp_path, killed), cwd=ROOT, env=env, check=True, capture_output=True)
  whole_run.wait()
  whole_log.close()
  assert whole_run.returncode == 0, (tmp_path / "whole.log").read_text()[-3000:]
  whole = json.loads((tmp_path / "whole" / "results.json").read_text())
  resumed = json.loads((killed / "results.json").read_text())
  assert 4 <= resumed["resumed_from_step"] < 20
  assert resumed["param_fingerprint"] == whole["param_fingerprint"]
  assert resumed["test_map50"] == whole["test_map50"]
  steps = [r["step"] for r in read_metrics(str(killed)) if r["split"] == "train"]
  assert steps == [4, 8, 12, 16, 20]  # each logged once: the two legs read as one run


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_a_detector_as_one_process_with_two_devices(tmp_path):
  flags = ["--config.total_steps=8", "--config.checkpoint_every_steps=8"]
  # The one-process run goes beside the two processes: each waits on the others' compiles.
  one = subprocess.Popen(
    _cli(tmp_path, tmp_path / "one", *flags),
    cwd=ROOT,
    env=subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  port = _free_port()
  procs = [
    subprocess.Popen(
      _cli(
        tmp_path,
        tmp_path / "two",
        *flags,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
      cwd=ROOT,
      env=subprocess_env(JAX_PLATFORMS="cpu"),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for p in [one, *procs]:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  a = json.loads((tmp_path / "one" / "results.json").read_text())
  b = json.loads((tmp_path / "two" / "results.json").read_text())
  assert a["param_fingerprint"] == b["param_fingerprint"]
  assert a["test_map50"] == b["test_map50"] and a["test_coco_ap"] == b["test_coco_ap"]
