"""The training loop: one readable function from a config to `results.json`.

A run writes into its workdir: config.json, metrics.jsonl, tensorboard/,
checkpoints/ (state and input-iterator position), figures/*.png and
results.json. A config's `analysis` ("module.function") is called on the
trained model after the last evaluation, as
`analysis(model, variables, config, workdir, transform) -> dict`, and its
numbers join results.json. Started again with the same workdir, it resumes from the last
good checkpoint and ends with the same parameters as a run never stopped.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import tempfile
import time

import jax
import numpy as np
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from research import models
from research.data import crops, datasets, pipeline, transforms
from research.evaluate import classification as evaluate
from research.train import classification, optimizers, steps
from research.train.checkpoints import Checkpointer
from research.train.parallel import DataParallel
from research.train.state import create_train_state, param_count, param_fingerprint
from research.train.writer import MetricWriter, read_metrics

log = logging.getLogger(__name__)


def check_workdir(workdir: str) -> str:
  """Creates `workdir` if needed; ValueError if it cannot be written."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ValueError(f"workdir: expected a writable directory; {workdir!r} is not ({e}).") from e
  return workdir


def check_steps(config: ConfigDict) -> None:
  """ValueError unless the step counts of `config` are positive integers (and its
  input-gradient penalty a finite number >= 0)."""
  for key in ("total_steps", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    value = config.get(key)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{key}: expected a positive integer; received {value!r}.")
  if config.get("eval_every_steps", 0) < 0:
    raise ValueError(
      f"eval_every_steps: expected 0 (evaluate at the end only) or a positive integer; "
      f"received {config.eval_every_steps!r}."
    )
  penalty = config.get("input_gradient_penalty", 0.0)
  number = isinstance(penalty, int | float) and not isinstance(penalty, bool)
  if not number or not math.isfinite(penalty) or penalty < 0:
    raise ValueError(
      f"input_gradient_penalty: expected a finite number >= 0; received {penalty!r}."
    )


def resolve_analysis(name: str):
  """ "package.module.function" -> that function; ValueError saying what was wrong otherwise."""
  module_name, _, fn_name = name.rpartition(".")
  try:
    module = importlib.import_module(module_name) if module_name else None
  except ImportError as e:
    module = None
    reason = str(e)
  else:
    reason = f"{module_name!r} has no function {fn_name!r}"
  fn = getattr(module, fn_name, None) if module is not None else None
  if not callable(fn):
    raise ValueError(
      f"analysis: expected 'package.module.function' naming a function, received {name!r} "
      f"({reason if module_name else 'no module part'})."
    )
  return fn


def _first_nonfinite(pending: list) -> tuple[int, float] | None:
  """(step, loss) of the first non-finite loss among (step, device loss) pairs."""
  values = jax.device_get([loss for _, loss in pending])
  for (step, _), value in zip(pending, values):
    if not np.isfinite(value):
      return step, float(value)
  return None


def _input_fns(config: ConfigDict, num_classes: int):
  """The batch transform and the random (training-only) transform that `config.input` describes."""
  c = config.input
  optional = lambda key: tuple(c[key]) if c.get(key) is not None else None
  transform = transforms.ClassificationTransform(
    num_classes=num_classes,
    pad=c.get("pad", 0),
    value_range=tuple(c.get("value_range", (0.0, 1.0))),
    mean=optional("mean"),
    std=optional("std"),
    channels=c.get("channels"),
    upscale=c.get("upscale", 1),
  )
  randoms = []
  if c.get("random_shift", 0):
    randoms.append(transforms.RandomShift(c.random_shift, fill=transform.background))
  if c.get("random_flip", False):
    randoms.append(transforms.RandomFlip())
  if c.get("pca_lighting", 0.0):
    randoms.append(crops.PCALighting(c.pca_lighting, std=tuple(c.get("std") or (1.0,) * 3)))
  if c.get("noise_std", 0.0):
    randoms.append(transforms.GaussianNoise(c.noise_std, c.get("noise_probability", 1.0)))
  random_transform = transforms.Chain(tuple(randoms)) if randoms else None
  train_crop, eval_crop = _crops(c)
  return transform, random_transform, train_crop, eval_crop


def _crops(c: ConfigDict):
  """(train record transform, eval record transform) for photographs of varying size."""
  kind = c.get("crop", "none")
  if kind == "none":
    return None, None
  size, resize = c.get("crop_size", 224), c.get("resize", 256)
  eval_crop = crops.ResizeCenterCrop(size, resize)
  if kind == "random_resized":
    return crops.RandomResizedCrop(size), eval_crop
  if kind == "scale_jitter":
    s_min, s_max = c.get("scale_range", (resize, resize))
    return crops.ScaleJitterCrop(size, s_min, s_max), eval_crop
  raise ValueError(
    f"input.crop: expected one of ['none', 'random_resized', 'scale_jitter']; received {kind!r}."
  )


def evaluate_split(config, state, eval_fn, parallel, source, transform, crop=None) -> dict:
  """Accuracy and loss over every record of `source` (the whole split)."""
  totals = None
  for batch in pipeline.eval_batches(
    source, global_batch_size=config.eval_batch_size, transform=transform, record_transform=crop
  ):
    sums = eval_fn(state, parallel.put_batch(batch))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  return evaluate.summarize(parallel.single(totals))


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict:
  """Trains `config.model` on `config.dataset`, evaluates, and returns results.json's dict."""
  start = time.time()
  check_steps(config)
  workdir = check_workdir(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  spec = datasets.get_spec(config.dataset)
  num_classes = config.get("num_classes") or spec.num_classes
  model = models.resolve(config.model)(num_classes=num_classes, **config.get("model_kwargs", {}))
  parallel = DataParallel(config.parallelism)
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
  transform, random_transform, train_crop, eval_crop = _input_fns(config, num_classes)
  loss_fn = classification.resolve_loss(config.get("loss", "classification"))
  train_source = datasets.data_source(config.dataset, spec.train_split, data_dir=config.data_dir)
  test_source = datasets.data_source(config.dataset, spec.test_split, data_dir=config.data_dir)
  train_iter = pipeline.train_iterator(
    train_source,
    global_batch_size=config.batch_size,
    seed=config.seed,
    transform=transform,
    random_transform=random_transform,
    record_transform=train_crop,
  )

  tx = optimizers.make_optimizer(config.optimizer, config.total_steps)
  schedule = optimizers.make_schedule(config.optimizer, config.total_steps)
  first = eval_crop(train_source[0]) if eval_crop else train_source[0]
  input_shape = transform({k: np.asarray(v)[None] for k, v in first.items()})["image"].shape
  state = create_train_state(model, tx, seed=config.seed, input_shape=input_shape)
  checkpointer = Checkpointer(
    os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints
  )
  restored = checkpointer.restore_latest(parallel.abstract_state(state))
  if restored is None:
    state = parallel.put_state(state)
    first_step = 0
  else:
    first_step, state, data_state = restored
    state = parallel.restored(state)
    train_iter.set_state(data_state)
    log.info("resumed from checkpoint %d in %s", first_step, checkpointer.directory)

  train_fn = parallel.compile_train(
    steps.train_step,
    model=model,
    loss_fn=loss_fn,
    input_gradient_penalty=float(config.get("input_gradient_penalty", 0.0)),
  )
  eval_fn = parallel.compile_eval(steps.eval_step, model=model, metrics_fn=evaluate.eval_counts)
  writer = MetricWriter(workdir, resume_step=first_step)
  pending, last_log, last_time = [], first_step, time.time()
  bar = tqdm(
    total=config.total_steps,
    initial=first_step,
    desc=config.model,
    disable=not is_main,
    unit="step",
    dynamic_ncols=True,
  )

  def check_finite():
    bad = _first_nonfinite(pending)
    if bad is not None:
      kept = checkpointer.all_steps()
      raise FloatingPointError(
        f"loss is {bad[1]} at step {bad[0]}: stopping. The last good checkpoint "
        f"({kept[-1] if kept else 'none'}) stays in {checkpointer.directory}."
      )

  try:
    for step in range(first_step + 1, config.total_steps + 1):
      state, metrics = train_fn(state, parallel.put_batch(next(train_iter)))
      pending.append((step, metrics["loss"] if parallel.mode == "jit" else metrics["loss"][0]))
      if step % config.log_every_steps == 0 or step == config.total_steps:
        check_finite()
        values = parallel.single(metrics)
        now = time.time()
        values["images_per_second"] = (step - last_log) * config.batch_size / (now - last_time)
        values["learning_rate"] = float(schedule(step - 1))
        writer.write(step, "train", values)
        bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_second']:.0f}")
        bar.update(step - bar.n)
        pending, last_log, last_time = [], step, now
      if config.eval_every_steps and step % config.eval_every_steps == 0:
        writer.write(
          step,
          "test",
          evaluate_split(config, state, eval_fn, parallel, test_source, transform, eval_crop),
        )
      if step % config.checkpoint_every_steps == 0 or step == config.total_steps:
        check_finite()
        pending = []
        checkpointer.save(step, parallel.state_for_checkpoint(state), train_iter.get_state())
  finally:
    bar.close()
    writer.flush()

  test = evaluate_split(config, state, eval_fn, parallel, test_source, transform, eval_crop)
  writer.write(config.total_steps, "test", test)
  writer.close()
  checkpointer.close()
  params = parallel.single(state.params)
  results = {
    **test,
    "wall_seconds": time.time() - start,
    "param_fingerprint": param_fingerprint(params),
    "param_count": param_count(params),
    "steps": config.total_steps,
    "resumed_from_step": first_step,
  }
  if config.get("analysis"):
    # What the experiment studies in the trained model (occlusion, deconvnet, ...).
    analyze = resolve_analysis(config.analysis)
    variables = {"params": params}
    if state.batch_stats:
      variables["batch_stats"] = parallel.single(state.batch_stats)
    results.update(analyze(model, variables, config, workdir, transform))
    results["wall_seconds"] = time.time() - start
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    plot_learning_curves(workdir)
  return results


def plot_learning_curves(workdir: str) -> str:
  """figures/learning_curves.png: train loss and test accuracy against steps."""
  # A bare Figure, not pyplot: no global backend switch, so notebooks keep inline plots.
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  rows = read_metrics(workdir)
  train = [r for r in rows if r["split"] == "train"]
  test = [r for r in rows if r["split"] == "test"]
  fig = Figure(figsize=(9, 3.5))
  ax1, ax2 = fig.subplots(1, 2)
  ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
  if test:
    ax1.plot([r["step"] for r in test], [r["test_loss"] for r in test], "o-", label="test")
  ax1.set(xlabel="step", ylabel="cross-entropy", title="loss")
  ax1.legend()
  ax2.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train (batch)")
  if test:
    ax2.plot([r["step"] for r in test], [r["test_accuracy"] for r in test], "o-", label="test")
  ax2.set(xlabel="step", ylabel="accuracy", title="accuracy")
  ax2.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "figures", "learning_curves.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=120)
  return path
