"""A Faster R-CNN run through `python -m research.main`: two processes through
jax.distributed train it exactly as one process with two devices does, and a run of that
process killed with SIGKILL resumes to the same parameters, losing nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

from research.train.writer import read_metrics
from tests.conftest import ROOT, sigkill_after_checkpoint, subprocess_env

# The :runlocal detector (ResNet-18/4 FPN on digit_scenes/multi) without its pretraining,
# 8 steps of 2 scenes, checkpointed every 2, evaluated on 20 test scenes.
CONFIG = textwrap.dedent(
  """
  from ml_collections import ConfigDict

  from experiments import faster_rcnn_voc2007


  def get_config(arg=None):
    c = faster_rcnn_voc2007.get_config("runlocal")
    c.init.path = ""
    c.batch_size = 2
    c.eval_batch_size = 10
    c.total_steps = 8
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.optimizer.warmup_steps = 0
    c.evals = [ConfigDict({"type": "detection_ap", "split": "test[:20]", "prefix": "test_"})]
    return c
  """
)
# One process with two host devices: the reference run, and the run that is killed.
TWO_DEVICES = "--xla_force_host_platform_device_count=2"


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


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _results(workdir) -> dict:
  return json.loads((workdir / "results.json").read_text())


def test_two_processes_and_a_sigkilled_run_train_a_detector_as_one_process(tmp_path):
  """One process with two devices (the reference), two processes with one device each, and
  the one-process run killed with SIGKILL after its first checkpoint and run again: all
  three end with the same parameters and test AP. One test, so that the killed run's two
  legs find the reference's compiled programs in the session's compilation cache (they
  are the same programs) instead of compiling them twice more."""
  two_devices = subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS=TWO_DEVICES)
  one = subprocess.Popen(
    _cli(tmp_path, tmp_path / "one"),
    cwd=ROOT,
    env=two_devices,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  # The two processes go beside it: each waits on the others' compiles.
  port = _free_port()
  procs = [
    subprocess.Popen(
      _cli(
        tmp_path,
        tmp_path / "two",
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
  a, b = _results(tmp_path / "one"), _results(tmp_path / "two")
  assert a["param_fingerprint"] == b["param_fingerprint"]
  assert a["test_map50"] == b["test_map50"] and a["test_coco_ap"] == b["test_coco_ap"]

  killed = tmp_path / "killed"
  sigkill_after_checkpoint(_cli(tmp_path, killed), killed, env=two_devices, min_step=2)
  subprocess.run(_cli(tmp_path, killed), cwd=ROOT, env=two_devices, check=True, capture_output=True)
  resumed = _results(killed)
  assert 2 <= resumed["resumed_from_step"] < 8
  assert resumed["param_fingerprint"] == a["param_fingerprint"]
  assert resumed["test_map50"] == a["test_map50"]
  steps = [r["step"] for r in read_metrics(str(killed)) if r["split"] == "train"]
  assert steps == [2, 4, 6, 8]  # each logged once: the two legs read as one run
