"""Two processes through jax.distributed on 127.0.0.1 train exactly as one process does."""

import json
import socket
import subprocess
import sys

from tests.conftest import ROOT, subprocess_env

ARGS = [
  "-m",
  "research.main",
  "--config=experiments/lenet5_mnist.py",
  "--config.total_steps=20",
  "--config.batch_size=32",
  "--config.eval_batch_size=100",
  "--config.checkpoint_every_steps=10",
  "--config.log_every_steps=10",
  "--config.eval_every_steps=0",
]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_with_two_devices(tmp_path):
  env = subprocess_env(JAX_PLATFORMS="cpu")
  one = subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  subprocess.run(
    [sys.executable, *ARGS, f"--workdir={tmp_path / 'one'}"],
    cwd=ROOT,
    env=one,
    check=True,
    capture_output=True,
    timeout=600,
  )
  port = _free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        *ARGS,
        f"--workdir={tmp_path / 'two'}",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  a = json.loads((tmp_path / "one" / "results.json").read_text())
  b = json.loads((tmp_path / "two" / "results.json").read_text())
  assert b["test_examples"] == 1000  # the two processes' shards together cover the test set
  assert a["test_accuracy"] == b["test_accuracy"]
  assert a["param_fingerprint"] == b["param_fingerprint"]
  assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["10", "20"]
