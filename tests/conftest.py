"""Shared fixtures: a LeNet-5 config small enough for tests."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# One persistent XLA compilation cache for this test session, its child processes and
# notebook kernels (they inherit the environment): many tests compile the same programs
# (LeNet-5's step in every loop test, the detector's in each process of a run), and a
# cache hit skips XLA's compilation, not tracing, so trace and jit-cache counts are as
# without it. Every compilation is kept, however short: a model initialized eagerly (as
# create_train_state does, so that its values stay those of every earlier run) compiles
# each initializer on its own, 257 programs of about 0.05 s for the Faster R-CNN of the
# detection runs, 14 s that each child process would otherwise spend again. Set
# JAX_COMPILATION_CACHE_DIR to keep one across sessions; the default is a fresh folder,
# removed at exit, so each run measures a cold start.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="research-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


# XLA's CPU backend at LLVM optimization level 1, not 2, in the test processes, their child
# processes and notebook kernels: most of a test's time is compiling programs it runs a few
# times. tests/detection took 338 s (624 s of CPU) at the default level and 294 s (541 s)
# at this one (two cores, AMD EPYC, 2026-12-07); the :runlocal Faster R-CNN's training step
# compiled in 12.3 s, not 15.6, and its parameters after one step moved by 1.7e-9 (of
# 1.0), the rounding of vectorized sums. Level 0 compiles faster still but drops fused
# multiply-adds: other numbers (model.init's values, research.train.state) and slower
# programs. Set XLA_FLAGS with its own --xla_backend_optimization_level to choose another.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


# pytest-xdist runs the suite in two worker processes (pyproject's addopts): much of a
# test's time is single-threaded tracing and XLA compilation, which a second worker
# overlaps. The workers share the cores, so OpenMP threads (oneDNN's and torch's) wait
# for work passively instead of spinning on the cores the other worker needs.
if os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Python's cyclic garbage collector walks every tracked object on a full collection, and a
# test process keeps hundreds of thousands alive (jax's caches of traced and compiled
# programs): in the RPN and RoI-head tests (-n 0), collections took 3.8 s in 1,918 at the
# default thresholds (700, 10, 10) and 1.2 s in 119 at these, with as many live objects at
# the end (7.2e5 and 7.3e5). A small saving (the runs' wall times varied 99-112 s), on every
# test; full collections still run, 57 times less often.
gc.set_threshold(10_000, 20, 20)


# glibc keeps the test process's freed memory for reuse (research.train.host_memory), as the
# command line does, before anything starts JAX's CPU client: without it every call of a
# large jitted program faults its temporaries in afresh. RESEARCH_KEEP_FREED_MEMORY=0 turns
# it off here too.
from research.train import host_memory  # noqa: E402

if host_memory.keep_freed_memory():
  # The same for child processes (notebook kernels, runs started with subprocess), through
  # glibc's tunables, read when a process starts.
  os.environ["GLIBC_TUNABLES"] = ":".join(
    filter(None, [os.environ.get("GLIBC_TUNABLES"), host_memory.GLIBC_TUNABLES])
  )


def pytest_xdist_auto_num_workers(config):
  """`-n auto`: two workers where two cores are free (each uses every core when the
  other waits), one on a single core."""
  del config
  return min(2, len(os.sched_getaffinity(0)))


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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


def pair(value) -> tuple[int, int]:
  """An int or a pair (stride, padding, window, output size) as (height, width)."""
  return (value, value) if isinstance(value, int) else tuple(value)


def subprocess_env(**extra) -> dict:
  """The environment for a child Python that imports this checkout, with `extra` set; an
  `XLA_FLAGS` in `extra` is added to this process's flags, not put in their place."""
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  if "XLA_FLAGS" in extra:  # keeps the optimization level above
    extra["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {extra['XLA_FLAGS']}".strip()
  env.update(extra)
  return env


def sigkill_after_checkpoint(command: list[str], workdir, *, env: dict, min_step: int = 1):
  """Starts `command` (a run writing into `workdir`, a pathlib.Path) from the checkout and
  kills it with SIGKILL once `workdir`/checkpoints holds a complete checkpoint of step
  `min_step` or later; asserts that it was still running then and wrote no results.json."""
  proc = subprocess.Popen(
    command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  path = workdir / "checkpoints"
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    # Complete checkpoints only: one being written is "N.orbax-checkpoint-tmp".
    steps = [int(s) for s in os.listdir(path) if s.isdigit()] if path.is_dir() else []
    if steps and max(steps) >= min_step:
      break
    time.sleep(0.01)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (workdir / "results.json").exists()


def randomize_batch_norms(torch, net, *, mean=0.5, var=(0.5, 2.0), bias=0.5):
  """Non-trivial BN running statistics and affine parameters of a torch `net` (in place),
  so that parity tests exercise the batch-norm conversion; returns `net`, mode unchanged."""
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-mean, mean)
        m.running_var.uniform_(*var)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-bias, bias)
  return net


def multi_test_scenes(count: int) -> list[dict]:
  """The first `count` digit_scenes/multi test scenes as the builder stores them, generated
  directly (no TFDS preparation)."""
  import itertools  # pylint: disable=import-outside-toplevel

  from research.data import digit_scenes  # pylint: disable=import-outside-toplevel

  images, labels, pools = digit_scenes.load_mnist5k()
  gen = digit_scenes.generate(digit_scenes.CONFIGS["multi"], "test", images, labels, pools["test"])
  return [record for _, record in itertools.islice(gen, count)]


def one_step(config, evaluator: dict):
  """`config` trimmed to one training step of batch 1, checkpointed, with the one evaluator
  `evaluator` (a dict of its keys); returns it."""
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel

  config.batch_size = config.eval_batch_size = 1
  config.total_steps = config.log_every_steps = config.checkpoint_every_steps = 1
  config.evals = [ConfigDict(evaluator)]
  return config


def scene_pngs(root) -> tuple[str, str]:
  """(PNG of test scene 0 of digit_scenes/multi, 128x128; the same enlarged to 256x192)
  written under `root`: the images a predictor reads from files."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from research.data import datasets  # pylint: disable=import-outside-toplevel

  scene = datasets.data_source("digit_scenes/multi", "test")[0]["image"][..., 0]
  small, big = str(root / "scene.png"), str(root / "scene_big.png")
  Image.fromarray(scene).save(small)
  Image.fromarray(scene).resize((256, 192), Image.Resampling.BILINEAR).save(big)
  return small, big


def write_coco_format(directory, scenes, *, stem: str = "scene") -> tuple[str, str]:
  """digit_scenes/multi records (as the builder stores them) written as a COCO-format data set:
  PNG images in `directory`/images and `directory`/annotations.json, whose categories are the
  digits "0".."9" under ids 1..10 and whose boxes are the scenes' [x, y, width, height].
  Returns (annotation file, image folder)."""
  import json  # pylint: disable=import-outside-toplevel

  from PIL import Image  # pylint: disable=import-outside-toplevel

  image_dir = os.path.join(directory, "images")
  os.makedirs(image_dir, exist_ok=True)
  images, annotations = [], []
  for i, scene in enumerate(scenes):
    name = f"{stem}{i}.png"
    Image.fromarray(scene["image"][..., 0]).save(os.path.join(image_dir, name))
    h, w = scene["image"].shape[:2]
    images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    for k in range(int(scene["num_objects"])):
      x1, y1, x2, y2 = (float(v) for v in scene["boxes"][k])
      annotations.append(
        {
          "id": len(annotations) + 1,
          "image_id": i + 1,
          "category_id": int(scene["labels"][k]) + 1,
          "bbox": [x1, y1, x2 - x1, y2 - y1],
        }
      )
  categories = [{"id": d + 1, "name": str(d)} for d in range(10)]
  path = os.path.join(directory, "annotations.json")
  with open(path, "w") as f:
    json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
  return path, image_dir


def assert_same_detections(boxes, scores, labels, want_boxes, want_scores, want_labels):
  """One image's detections equal a peer's, in its order, up to the order of near-ties.

  boxes [K, 4], scores [K], labels [K] against the peer's. Labels are equal and scores
  within 2e-4 place by place; each box equals (rtol 1e-3, atol 1e-2) the peer's box at
  its place or, where two detections of one class have scores within 2e-4 of each other
  and float32 rounding ordered them the other way (seen on an AVX2-only CPU), the box of
  that tied detection. Returns the permutation of the peer's detections that matches ours.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  boxes, scores, labels = (np.asarray(a) for a in (boxes, scores, labels))
  want_boxes, want_scores, want_labels = (
    np.asarray(a) for a in (want_boxes, want_scores, want_labels)
  )
  np.testing.assert_array_equal(labels, want_labels)
  np.testing.assert_allclose(scores, want_scores, atol=2e-4)
  close = lambda a, b: np.all(np.abs(a - b) <= 1e-2 + 1e-3 * np.abs(b))  # noqa: E731
  order, used = [], set()
  for i in range(len(boxes)):
    tied = [
      j
      for j in range(len(want_boxes))
      if j not in used
      and want_labels[j] == labels[i]
      and abs(want_scores[j] - scores[i]) <= 2e-4
      and close(boxes[i], want_boxes[j])
    ]
    assert tied, (
      f"detection {i} (label {labels[i]}, score {scores[i]:.6f}, box {boxes[i]}) has no "
      f"peer detection of its class, score and box; at its place: {want_boxes[i]}"
    )
    j = i if i in tied else tied[0]
    used.add(j)
    order.append(j)
  return np.asarray(order)
