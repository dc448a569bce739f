"""Pure train and eval steps on a fake model with known gradients: exact numbers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from research.evaluate import classification as evaluate
from research.train import optimizers, steps
from research.train.state import create_train_state, param_fingerprint
from research.train.tasks import classification


class Linear(nn.Module):
  """logits = flatten(x) @ W: the cross-entropy gradient is (softmax - onehot)^T x / B."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, *, train=False):
    logits = nn.Dense(self.num_classes, use_bias=False)(x.reshape(x.shape[0], -1))
    return logits, {"logits": logits}


def _batch():
  rng = np.random.default_rng(0)
  return {
    "image": rng.normal(size=(4, 2, 2, 1)).astype(np.float32),
    "label": np.array([0, 1, 2, 1], np.int32),
  }


def test_train_step_applies_the_cross_entropy_gradient():
  model, batch, lr = Linear(), _batch(), 0.5
  state = create_train_state(model, optax.sgd(lr), seed=0, input_shape=(1, 2, 2, 1))
  w = np.asarray(state.params["Dense_0"]["kernel"])
  step = jax.jit(
    functools.partial(steps.train_step, model=model, loss_fn=classification.classification_loss)
  )
  new_state, metrics = step(state, batch)
  x = batch["image"].reshape(4, -1)
  p = jax.nn.softmax(x @ w)
  grad = x.T @ (p - np.eye(3)[batch["label"]]) / 4
  np.testing.assert_allclose(new_state.params["Dense_0"]["kernel"], w - lr * grad, atol=1e-6)
  np.testing.assert_allclose(
    metrics["loss"], -np.log(p[np.arange(4), batch["label"]]).mean(), rtol=1e-6
  )
  assert int(new_state.step) == 1


def test_input_gradient_penalty_is_the_mean_squared_input_gradient_of_each_loss():
  """For logits = x W, d loss_i / d x_i = W (softmax_i - onehot_i): the step reports the mean
  of its squared norm and descends CE + lambda * that, in closed form."""
  model, batch, lr, lam = Linear(), _batch(), 0.5, 0.3
  state = create_train_state(model, optax.sgd(lr), seed=0, input_shape=(1, 2, 2, 1))
  w = jnp.asarray(state.params["Dense_0"]["kernel"])
  step = jax.jit(
    functools.partial(
      steps.train_step,
      model=model,
      loss_fn=classification.classification_loss,
      input_gradient_penalty=lam,
    )
  )
  new_state, metrics = step(state, batch)
  x, onehot = batch["image"].reshape(4, -1), np.eye(3)[batch["label"]]

  def penalty(w):
    return jnp.mean(jnp.sum(((jax.nn.softmax(x @ w) - onehot) @ w.T) ** 2, axis=1))

  def objective(w):
    ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(x @ w), axis=1))
    return ce + lam * penalty(w)

  np.testing.assert_allclose(metrics["input_gradient_penalty"], penalty(w), rtol=1e-5)
  expected = w - lr * jax.grad(objective)(w)
  np.testing.assert_allclose(new_state.params["Dense_0"]["kernel"], expected, atol=1e-6)


def test_eval_step_counts_exactly_and_ignores_masked_rows():
  model, batch = Linear(), _batch()
  state = create_train_state(model, optax.sgd(0.1), seed=0, input_shape=(1, 2, 2, 1))
  logits = np.asarray(model.apply({"params": state.params}, batch["image"])[0])
  batch["mask"] = np.array([True, True, True, False])
  sums = steps.eval_step(state, batch, model=model, metrics_fn=evaluate.eval_counts)
  hits = (logits.argmax(-1) == batch["label"])[:3].sum()
  assert float(sums["count"]) == 3.0
  assert float(sums["correct"]) == hits
  assert float(sums["correct_top5"]) == 3.0  # 3 classes: always in the top 5
  summary = evaluate.summarize(jax.device_get(sums))
  assert summary["test_accuracy"] == hits / 3


def test_same_seed_same_parameters():
  a = create_train_state(Linear(), optax.sgd(0.1), seed=7, input_shape=(1, 2, 2, 1))
  b = create_train_state(Linear(), optax.sgd(0.1), seed=7, input_shape=(1, 2, 2, 1))
  c = create_train_state(Linear(), optax.sgd(0.1), seed=8, input_shape=(1, 2, 2, 1))
  assert param_fingerprint(a.params) == param_fingerprint(b.params) != param_fingerprint(c.params)


def _opt(**kw):
  c = ConfigDict(
    {
      "name": "momentum",
      "learning_rate": 0.1,
      "momentum": 0.9,
      "weight_decay": 0.0,
      "schedule": "constant",
      "warmup_steps": 0,
      "boundaries": (0.5, 0.75),
      "decay_factor": 0.1,
      "decay_every_steps": 1,
    }
  )
  for k, v in kw.items():  # update() would refuse keys the dict lacks (max_filter_rms)
    c[k] = v
  return c


def test_step_schedule_divides_at_the_boundaries():
  schedule = optimizers.make_schedule(_opt(schedule="step"), total_steps=100)
  assert [float(schedule(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
    [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
  )


def test_warmup_ramps_a_step_schedule_linearly_then_leaves_it():
  schedule = optimizers.make_schedule(_opt(schedule="step", warmup_steps=10), total_steps=100)
  assert [float(schedule(s)) for s in (0, 5, 10, 49, 50, 75)] == pytest.approx(
    [0.0, 0.05, 0.1, 0.1, 0.01, 0.001]
  )
  with pytest.raises(ValueError, match="optimizer.warmup_steps: expected a number >= 0"):
    optimizers.make_schedule(_opt(warmup_steps=-1), total_steps=100)


def test_weight_decay_adds_l2_gradient():
  opt = _opt(name="sgd", weight_decay=0.5, weight_decay_on="all")
  tx = optimizers.make_optimizer(opt, total_steps=10)
  params = {"w": jnp.array([2.0])}
  updates, _ = tx.update({"w": jnp.array([1.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.1 * (1.0 + 0.5 * 2.0)])


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("name", "adagrad", "optimizer.name: expected one of"),
    ("schedule", "linear", "optimizer.schedule: expected one of"),
  ],
)
def test_unknown_optimizer_or_schedule(key, value, message):
  with pytest.raises(ValueError, match=message):
    optimizers.make_optimizer(_opt(**{key: value}), total_steps=10)


def test_filters_above_the_rms_cap_are_scaled_back_and_others_kept():
  tx = optimizers.make_optimizer(_opt(name="sgd", learning_rate=1.0, max_filter_rms=0.1), 10)
  kernel = np.zeros((2, 2, 1, 3), np.float32)
  kernel[..., 1] = 0.05  # RMS 0.05: under the cap
  params = {"conv": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(3)}}
  grads = {"conv": {"kernel": -jnp.ones((2, 2, 1, 3)), "bias": -jnp.ones(3)}}
  new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  rms = np.sqrt(np.mean(np.square(new["conv"]["kernel"]), axis=(0, 1, 2)))
  np.testing.assert_allclose(rms, [0.1, 0.1, 0.1], rtol=1e-6)  # 1.0 and 1.05 scaled back
  np.testing.assert_allclose(new["conv"]["bias"], np.ones(3))  # not a filter: plain SGD


def test_exponential_schedule_decays_in_stairs():
  schedule = optimizers.make_schedule(
    _opt(schedule="exponential", decay_every_steps=8, decay_factor=0.96), total_steps=100
  )
  assert [float(schedule(s)) for s in (0, 7, 8, 16)] == pytest.approx([0.1, 0.1, 0.096, 0.09216])
