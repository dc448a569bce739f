"""The task seam: config.task, config.evals (device sums and host-side evaluators),
headless models, config.dtype."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from research.data import datasets, pipeline
from research.models.lenet import LeNet5
from research.models.resnet import ResNet18
from research.train import loop, optimizers, steps, tasks
from research.train.checkpoints import Checkpointer
from research.train.state import create_train_state
from research.train.tasks import classification


def test_tasks_resolve_by_name_and_unknown_ones_list_the_valid():
  assert tasks.resolve("classification") is classification
  assert "classification" in tasks.names()
  with pytest.raises(ValueError, match=r"task: unknown task 'segmentaton'; expected one of \["):
    tasks.resolve("segmentaton")


def test_evals_list_device_and_host_evaluators_with_their_own_schedules(small_config, tmp_path):
  c = small_config
  c.evals = [
    ConfigDict({"type": "accuracy", "split": "test", "every_steps": 20}),
    ConfigDict({"type": "confusion", "split": "test", "name": "test_confusion"}),
  ]
  workdir = str(tmp_path)
  results = loop.train_and_evaluate(c, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if r["split"] == "test"] == [20, 40]
  assert [r["step"] for r in rows if r["split"] == "test_confusion"] == [40]
  assert os.path.isfile(os.path.join(workdir, "figures", "confusion_test_confusion.png"))
  assert os.path.isfile(os.path.join(workdir, "figures", "learning_curves.png"))

  # The host-side numbers, recomputed here from the final model over the whole split.
  spec = datasets.get_spec(c.dataset)
  model = LeNet5()
  tx = optimizers.make_optimizer(c.optimizer, c.total_steps)
  abstract = jax.eval_shape(
    lambda: create_train_state(model, tx, seed=0, input_shape=(1, 32, 32, 1))
  )
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  _, state, _ = ckpt.restore_latest(abstract)
  ckpt.close()
  transform = classification.input_fns(c, 10).transform
  predictions, labels = [], []
  for batch in pipeline.eval_batches(
    datasets.data_source(c.dataset, spec.test_split), global_batch_size=250, transform=transform
  ):
    logits, _ = steps.apply_model(state, batch, model=model)
    keep = batch["mask"]
    predictions.append(np.argmax(logits, -1)[keep])
    labels.append(batch["label"][keep])
  predictions, labels = np.concatenate(predictions), np.concatenate(labels)
  recalls = [np.mean(predictions[labels == k] == k) for k in range(10)]
  assert results["test_accuracy"] == pytest.approx(np.mean(predictions == labels), abs=1e-9)
  assert results["test_mean_class_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-9)
  assert results["test_worst_class_accuracy"] == pytest.approx(np.min(recalls), abs=1e-9)


def test_an_empty_evals_list_trains_without_evaluating(small_config, tmp_path):
  """No key: the task's default evaluators; an empty list: none (it used to mean the
  default too, so a run could not skip evaluation)."""
  small_config.evals = []
  workdir = str(tmp_path)
  results = loop.train_and_evaluate(small_config, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert {r["split"] for r in rows} == {"train"}
  assert not [k for k in results if k.startswith("test_")], results
  assert results["steps"] == small_config.total_steps


@pytest.mark.parametrize(
  "evals, message",
  [
    (
      [{"type": "coco"}],
      r"evals\[0\]\.type: unknown evaluator 'coco' for task 'classification'; expected one of \['accuracy', 'confusion'\]",
    ),
    ([{"type": "accuracy", "every": 5}], r"evals: 'accuracy' entries take the keys"),
    ([{"type": "accuracy", "every_steps": -1}], r"every_steps: expected 0 .* received -1"),
    ([{"type": "accuracy"}, {"type": "confusion"}], r"write the same metrics.jsonl split"),
  ],
)
def test_bad_evals_are_errors_before_training(small_config, tmp_path, evals, message):
  small_config.evals = [ConfigDict(e) for e in evals]
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(small_config, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_unknown_task_and_dtype_are_errors(small_config, tmp_path):
  small_config.task = "detecton"
  with pytest.raises(ValueError, match=r"task: unknown task 'detecton'"):
    loop.train_and_evaluate(small_config, str(tmp_path))
  small_config.task = "classification"
  small_config.dtype = "float16"
  with pytest.raises(
    ValueError, match=r"dtype: expected one of \['bfloat16', 'float32'\]; received 'float16'"
  ):
    loop.train_and_evaluate(small_config, str(tmp_path))


def test_a_headless_model_asked_for_logits_is_a_clear_error():
  model = LeNet5(num_classes=0)
  x = jnp.zeros((2, 32, 32, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  outputs = model.apply(variables, x)
  assert outputs[0] is None
  batch = {"image": x, "label": jnp.zeros(2, jnp.int32), "mask": jnp.ones(2, bool)}
  with pytest.raises(
    ValueError,
    match=r"classification_loss: the model returned no logits: it was built headless \(num_classes=0",
  ):
    classification.classification_loss(outputs, batch)
  with pytest.raises(ValueError, match=r"accuracy evaluator: the model returned no logits"):
    classification.Accuracy.sums(outputs, batch)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_params_stats_and_loss():
  import optax  # pylint: disable=import-outside-toplevel

  model = ResNet18(num_classes=10, num_filters=8, dtype=jnp.bfloat16)
  state = create_train_state(model, optax.sgd(0.1), seed=0, input_shape=(1, 32, 32, 3))
  batch = {
    "image": jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3)),
    "label": jnp.arange(4, dtype=jnp.int32),
  }
  logits, _ = steps.apply_model(state, batch, model=model)
  assert logits.dtype == jnp.bfloat16
  new, metrics = jax.jit(
    lambda s, b: steps.train_step(s, b, model=model, loss_fn=classification.classification_loss)
  )(state, batch)
  assert metrics["loss"].dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(new.batch_stats)} == {jnp.dtype(jnp.float32)}
  assert np.isfinite(float(metrics["loss"]))
