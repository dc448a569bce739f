"""keep_freed_memory: glibc's settings applied once per process, or not at all when the
environment says so. Each case runs in a child process: the setting is process-wide and
must come before JAX starts its CPU client. (What it saves, page faults of training
steps, is measured by benchmarks/throughput.py, whose rows record it.)"""

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import subprocess_env

CHILD = textwrap.dedent(
  """
  import json, resource
  from research.train import host_memory
  first = host_memory.keep_freed_memory()
  again = host_memory.keep_freed_memory()  # once per process: the same answer
  import jax, jax.numpy as jnp
  step = jax.jit(lambda w: w - 1e-3 * jnp.tanh(w @ w), donate_argnums=0)
  w = jnp.eye(512)
  for _ in range(3):
    w = step(w).block_until_ready()
  print(json.dumps({"first": first, "again": again, "kept": host_memory.kept()}))
  """
)


def _child(**env) -> dict:
  out = subprocess.run(
    [sys.executable, "-c", CHILD],
    env=subprocess_env(**env),
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_applies_once_and_the_environment_turns_it_off():
  # glibc accepts the three settings, and jitted programs run under them.
  assert _child() == {"first": True, "again": True, "kept": True}
  assert _child(RESEARCH_KEEP_FREED_MEMORY="0") == {"first": False, "again": False, "kept": False}
