"""Shared fixtures: a LeNet-5 config small enough for tests."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


@pytest.fixture
def small_config():
  """experiments/lenet5_mnist.py with 40 steps, checkpoints every 20."""
  from experiments import lenet5_mnist  # pylint: disable=import-outside-toplevel

  c = lenet5_mnist.get_config()
  c.total_steps = 40
  c.log_every_steps = 10
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 20
  c.batch_size = 32
  c.eval_batch_size = 250
  return c


def subprocess_env(**extra) -> dict:
  """The environment for a child Python that imports this checkout."""
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  return env
