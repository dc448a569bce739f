"""The training loop: one readable function from a config to `results.json`, for every task.

`config.task` (default "classification") names the module of `research.train.tasks`
that supplies what differs per task: transforms, loss, the model's extra arguments,
evaluators (`config.evals`) and figures. `config.init` loads pretrained weights
(`research.train.init`), `config.optimizer.groups` freezes or rescales parameter groups
(`research.train.optimizers`), and `config.dtype` ("float32" or "bfloat16") is the
models' computation type: parameters, batch statistics and losses stay float32.

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
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from research import models
from research.data import pipeline
from research.data import sources as data_sources
from research.train import evaluators, init, optimizers, steps, tasks
from research.train.checkpoints import Checkpointer
from research.train.parallel import DataParallel
from research.train.state import create_train_state, param_count, param_fingerprint
from research.train.writer import MetricWriter

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


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _has_init(config: ConfigDict) -> bool:
  """Whether `config.init` names weights (a path string, or an entry with a `path`)."""
  spec = config.get("init")
  return bool(spec) and (isinstance(spec, str) or bool(spec.get("path")))


def build_model(config: ConfigDict, num_classes: int):
  """`config.model` with `num_classes`, `config.model_kwargs` and the `config.dtype`."""
  dtype = config.get("dtype", "float32")
  if dtype not in DTYPES:
    raise ValueError(f"dtype: expected one of {sorted(DTYPES)}; received {dtype!r}.")
  cls = models.resolve(config.model)
  kwargs = dict(config.get("model_kwargs", {}))
  fields = getattr(getattr(cls, "func", cls), "__dataclass_fields__", {})
  if dtype != "float32":
    if "dtype" not in fields:
      raise ValueError(f"dtype: {config.model} has no dtype argument; received dtype={dtype!r}.")
    kwargs["dtype"] = DTYPES[dtype]
  return cls(num_classes=num_classes, **kwargs)


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict:
  """Trains `config.model` on `config.dataset` for `config.task`, evaluates, and returns
  results.json's dict."""
  start = time.time()
  check_steps(config)
  task = tasks.resolve(config.get("task", "classification"))
  workdir = check_workdir(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  spec, sources = data_sources.from_config(config)
  num_classes = config.get("num_classes") or spec.num_classes
  model = build_model(config, num_classes)
  parallel = DataParallel(config.parallelism)
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
  inputs = task.input_fns(config, num_classes)
  loss_fn = task.loss_fn(config)
  train_split = config.get("train_split") or spec.train_split
  train_source = sources(train_split)
  train_iter = pipeline.train_iterator(
    train_source,
    global_batch_size=config.batch_size,
    seed=config.seed,
    transform=inputs.transform,
    random_transform=inputs.random_transform,
    record_transform=inputs.train_record,
  )
  # None (the key absent): the task's default; an empty list: no evaluation at all.
  specs = config.get("evals")
  evals = evaluators.build(
    task.default_evals(config) if specs is None else specs,
    task.EVALUATORS,
    evaluators.Context(
      model=model,
      parallel=parallel,
      sources=sources,
      transform=inputs.transform,
      eval_record=inputs.eval_record,
      model_kwargs=task.model_kwargs,
      eval_batch_size=config.eval_batch_size,
      num_classes=num_classes,
      workdir=workdir,
      train_split=train_split,
      test_split=spec.test_split,
    ),
    task.__name__.rpartition(".")[2],
  )

  tx = optimizers.make_optimizer(config.optimizer, config.total_steps)
  schedule = optimizers.make_schedule(config.optimizer, config.total_steps)
  first = inputs.eval_record(train_source[0]) if inputs.eval_record else train_source[0]
  input_shape = inputs.transform({k: np.asarray(v)[None] for k, v in first.items()})["image"].shape
  state = create_train_state(model, tx, seed=config.seed, input_shape=input_shape)
  checkpointer = Checkpointer(
    os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints
  )
  restored = checkpointer.restore_latest(parallel.abstract_state(state))
  if restored is None:
    if _has_init(config):
      variables, _ = init.load(
        config.init, {"params": state.params, "batch_stats": state.batch_stats}
      )
      params = variables["params"]
      state = state.replace(
        params=params,
        batch_stats=variables.get("batch_stats", state.batch_stats),
        opt_state=tx.init(params),
      )
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
    model_kwargs=task.model_kwargs,
    input_gradient_penalty=float(config.get("input_gradient_penalty", 0.0)),
  )
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
      for evaluator in evals:
        if evaluator.due(step) and step != config.total_steps:
          writer.write(step, evaluator.name, evaluator.run(state, final=False))
      if step % config.checkpoint_every_steps == 0 or step == config.total_steps:
        check_finite()
        pending = []
        checkpointer.save(step, parallel.state_for_checkpoint(state), train_iter.get_state())
  finally:
    bar.close()
    writer.flush()

  final = {}
  for evaluator in evals:
    values = evaluator.run(state, final=True)
    writer.write(config.total_steps, evaluator.name, values)
    final.update(values)
  writer.close()
  checkpointer.close()
  params = parallel.single(state.params)
  results = {
    **final,
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
    results.update(analyze(model, variables, config, workdir, inputs.transform))
    results["wall_seconds"] = time.time() - start
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    task.figures(workdir)
  return results
