"""Run as a script with 8 host devices: 10 LeNet-5 steps three ways, printing parameters' gaps.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/train/run_parallel_steps.py

Prints JSON {"devices": 8, "pmap": max |p - p_single|, "jit": ...}.
"""

import functools
import json

import jax
import numpy as np
import optax

from research.data import datasets, pipeline, transforms
from research.models.lenet import LeNet5
from research.train import steps
from research.train.tasks import classification
from research.train.parallel import DataParallel
from research.train.state import create_train_state

STEPS, BATCH = 10, 64


def main():
  model = LeNet5()
  tx = optax.sgd(0.05, momentum=0.9, nesterov=True)
  fresh = lambda: create_train_state(model, tx, seed=0, input_shape=(1, 32, 32, 1))
  it = pipeline.train_iterator(
    datasets.data_source("mnist5k", "train"),
    global_batch_size=BATCH,
    seed=0,
    transform=transforms.ClassificationTransform(10, pad=2, value_range=(-0.1, 1.175)),
  )
  batches = [next(it) for _ in range(STEPS)]

  single = jax.jit(
    functools.partial(steps.train_step, model=model, loss_fn=classification.classification_loss)
  )
  state = jax.device_put(fresh(), jax.devices()[0])
  for b in batches:
    state, _ = single(state, b)
  reference = jax.device_get(state.params)

  gaps = {"devices": jax.device_count()}
  for mode in ("pmap", "jit"):
    parallel = DataParallel(mode)
    step = parallel.compile_train(
      steps.train_step, model=model, loss_fn=classification.classification_loss
    )
    state = parallel.put_state(fresh())
    for b in batches:
      state, _ = step(state, parallel.put_batch(b))
    params = parallel.single(state.params)
    gaps[mode] = max(
      float(np.abs(a - b).max())
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference))
    )
    if mode == "jit":
      gaps["jit_batch_sharding"] = str(parallel.put_batch(batches[0])["image"].sharding.spec)
  print(json.dumps(gaps))


if __name__ == "__main__":
  main()
