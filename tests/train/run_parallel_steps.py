"""Run as a script with 8 host devices: 10 steps (the detector 5) three ways, printing
parameters' gaps.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/train/run_parallel_steps.py

Three models: LeNet-5 (dropout-free classification); LeNet-5 with an RPN-like objectness
head trained on a balanced random sample of positions per image (the detectors' anchor
sampling, `research.detection.assign.sample`), drawn from the step's "sample" stream; and
a small Faster R-CNN (ResNet-18 at an eighth width with frozen batch norm, FPN, RPN, RoI
heads) on digit_scenes/multi through the detection task's inputs, batch 8.
Prints JSON {"devices": 8, "pmap": max |p - p_single|, "jit": ..., "sample_pmap": ...,
"sample_jit": ..., "detection_pmap": ..., "detection_jit": ...}.
"""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from experiments import faster_rcnn_voc2007
from research.data import datasets, pipeline, sources, transforms
from research.detection import assign
from research.detection.faster_rcnn import FasterRCNN_ResNet18_FPN_Scenes, ResNetFPN
from research.models import resnet
from research.models.lenet import LeNet5
from research.models.norms import FrozenBatchNorm
from research.train import steps, tasks
from research.train.parallel import DataParallel
from research.train.state import create_train_state
from research.train.tasks import classification

STEPS, BATCH = 10, 64
DETECTION_STEPS = 5  # the detector's steps cost most of the script's time


class SampledObjectness(nn.Module):
  """LeNet-5 plus a 3x3 objectness conv over the image; in training, 32 positions per
  image (a quarter ink, the rest background) are drawn with the image's own key."""

  @nn.compact
  def __call__(self, x, *, train=False, example_index=None):
    logits, out = LeNet5(name="lenet")(x, train=train)
    score = nn.Conv(1, (3, 3), name="objectness")(x)[..., 0].reshape(x.shape[0], -1)
    if not train:
      return logits, out
    labels = (x[..., 0] > 0.5).reshape(x.shape[0], -1).astype(jnp.int32)
    keys = steps.example_keys(self.make_rng("sample"), example_index)
    draw = functools.partial(assign.sample, num_samples=32, positive_fraction=0.25)
    idx, valid = jax.vmap(draw)(labels, keys)
    chosen = jnp.take_along_axis(score, idx, 1)
    target = jnp.take_along_axis(labels, idx, 1).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(chosen, target)
    out["objectness_loss"] = (bce * valid).sum() / valid.sum()
    return logits, out


def sampled_loss(outputs, batch):
  losses = classification.classification_loss(outputs, batch)
  objectness = outputs[1]["objectness_loss"]
  return {**losses, "loss": losses["loss"] + objectness, "objectness": objectness}


def index_kwargs(batch, *, train):
  return {"example_index": batch["example_index"]} if train else {}


def _gap(params, reference) -> float:
  return max(
    float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference))
  )


def gaps(model, loss_fn, batches, model_kwargs=None, learning_rate=0.05):
  """{mode: the parameters' gap after all steps, f"{mode}_stepwise": the largest gap of
  one step taken from the single-device run's state before it}, for pmap and sharded jit."""
  tx = optax.sgd(learning_rate, momentum=0.9, nesterov=True)
  input_shape = (1, *batches[0]["image"].shape[1:])
  step = functools.partial(
    steps.train_step, model=model, loss_fn=loss_fn, model_kwargs=model_kwargs
  )
  # Host copies: the parallel steps donate theirs. Each mode starts from trajectory[0]:
  # the loop's own (eager) initialization, once.
  state = create_train_state(model, tx, seed=0, input_shape=input_shape)
  trajectory = [jax.device_get(state)]
  state = jax.device_put(state, jax.devices()[0])
  single = jax.jit(step)
  for b in batches:
    state, _ = single(state, b)
    trajectory.append(jax.device_get(state))
  out = {}
  for mode in ("pmap", "jit"):
    parallel = DataParallel(mode)
    compiled = parallel.compile_train(
      steps.train_step, model=model, loss_fn=loss_fn, model_kwargs=model_kwargs
    )
    state = parallel.put_state(trajectory[0])
    for b in batches:
      state, _ = compiled(state, parallel.put_batch(b))
    out[mode] = _gap(parallel.single(state.params), trajectory[-1].params)
    out[f"{mode}_stepwise"] = max(
      _gap(
        parallel.single(compiled(parallel.put_state(before), parallel.put_batch(b))[0].params),
        after.params,
      )
      for before, b, after in zip(trajectory, batches, trajectory[1:])
    )
    if mode == "jit":
      out["jit_batch_sharding"] = str(parallel.put_batch(batches[0])["image"].sharding.spec)
  return out


def detection_batches(count: int, size: int):
  """`count` training batches of `size` digit_scenes/multi scenes, as the loop reads them."""
  config = faster_rcnn_voc2007.get_config("runlocal")
  spec, split_source = sources.from_config(config)
  inputs = tasks.resolve("detection").input_fns(config, spec.num_classes)
  it = pipeline.train_iterator(
    split_source(spec.train_split),
    global_batch_size=size,
    seed=0,
    transform=inputs.transform,
    record_transform=inputs.train_record,
  )
  return spec.num_classes, [next(it) for _ in range(count)]


def main():
  it = pipeline.train_iterator(
    datasets.data_source("mnist5k", "train"),
    global_batch_size=BATCH,
    seed=0,
    transform=transforms.ClassificationTransform(10, pad=2, value_range=(-0.1, 1.175)),
  )
  batches = [next(it) for _ in range(STEPS)]
  result = {"devices": jax.device_count()}
  result.update(gaps(LeNet5(), classification.classification_loss, batches))
  sampled = gaps(SampledObjectness(), sampled_loss, batches, index_kwargs)
  result.update({f"sample_{k}": v for k, v in sampled.items() if k != "jit_batch_sharding"})
  num_classes, scenes = detection_batches(DETECTION_STEPS, 8)
  detector = FasterRCNN_ResNet18_FPN_Scenes(
    num_classes=num_classes,
    # Frozen batch norm, as torchvision's detectors: batch norm that trains normalizes each
    # device's images by their own statistics, which no data-parallel split keeps.
    backbone=functools.partial(
      ResNetFPN,
      resnet=functools.partial(resnet.ResNet18, num_filters=8),
      norm=FrozenBatchNorm,
      out_channels=32,
    ),
  )
  detection = tasks.resolve("detection")
  found = gaps(detector, detection.loss_fn(ConfigDict()), scenes, detection.model_kwargs, 0.01)
  result.update({f"detection_{k}": v for k, v in found.items() if k != "jit_batch_sharding"})
  print(json.dumps(result))


if __name__ == "__main__":
  main()
