"""Class model visualization (Simonyan, Vedaldi & Zisserman 2013, Section 2, eq. 1).

The image that a trained network finds most typical of class c:

    I* = argmax_I  S_c(I) - l2 * ||I||^2

by gradient ascent from the zero image, S_c the unnormalized class score (the
logit): maximizing the softmax could instead lower the other classes' scores.
The L2 term keeps the image bounded. The image lives in the model's input
space; the paper adds the training mean image back for display, and so should
the caller (undo the input normalization). At the zero image only ReLUs with a
positive bias pass gradient, so a freshly initialized network (Flax's biases
are zero) cannot leave it; a trained one can.

Beyond the paper, and off by default, two regularizers from Yosinski et al.
(2015) that make the images look more natural: `jitter` (a random roll of up
to that many pixels before each gradient step, so no single pixel alignment is
rewarded) and `blur_every` / `blur_sigma` (a Gaussian blur of the image every
so many steps, damping high frequencies).

`model_fn(images [K, H, W, C]) -> (logits [K, num_classes], out)` is a model in
eval mode, e.g. `functools.partial(model.apply, variables)`. Several classes
are visualized at once, one image each, in one batch.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from research.interpret.checks import check_label
from research.ops import kernels

__all__ = ["objective", "class_model"]


def _logits(model_fn, images):
  result = model_fn(images)
  # (logits, out) by contract; a bare logits array must not be indexed with [0].
  return result[0] if isinstance(result, tuple | list) else result


def objective(model_fn, images, labels, l2: float) -> jax.Array:
  """S_c(I) - l2 * ||I||^2 per image (eq. 1): images [K, H, W, C], labels [K] int -> [K]."""
  logits = _logits(model_fn, images)
  score = jnp.take_along_axis(logits, jnp.asarray(labels)[:, None], axis=-1)[:, 0]
  return score - l2 * jnp.sum(jnp.square(images), axis=(1, 2, 3))


def _blur(images, sigma: float):
  """Depthwise Gaussian blur of [K, H, W, C], edges mirrored so the border keeps its level."""
  radius = max(1, math.ceil(3 * sigma))
  channels = images.shape[-1]
  kernel = kernels.gaussian(2 * radius + 1, sigma).astype(images.dtype)
  kernel = jnp.tile(kernel[:, :, None, None], (1, 1, 1, channels))
  padded = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="symmetric")
  return jax.lax.conv_general_dilated(
    padded,
    kernel,
    window_strides=(1, 1),
    padding="VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=channels,
  )


def _int_at_least(value, minimum: int, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"class_model: {name} must be an int >= {minimum}; received {value!r}.")
  return int(value)


def _check_image_shape(image_shape) -> tuple[int, int, int]:
  try:
    shape = tuple(image_shape)
  except TypeError:
    shape = None
  if (
    shape is None
    or len(shape) != 3
    or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in shape)
  ):
    raise ValueError(
      f"class_model: image_shape must be (H, W, C), three positive ints, one image without a "
      f"batch axis; received {image_shape!r}."
    )
  return tuple(int(n) for n in shape)


def class_model(
  model_fn,
  label,
  *,
  image_shape,
  l2: float = 0.01,
  learning_rate: float = 1.0,
  steps: int = 200,
  optimizer: optax.GradientTransformation | None = None,
  jitter: int = 0,
  blur_every: int = 0,
  blur_sigma: float = 0.5,
  seed: int = 0,
  progress: bool = False,
  return_objectives: bool = False,
):
  """The class model image(s) of eq. 1 by gradient ascent from the zero image.

  Args:
    model_fn: images [K, H, W, C] -> (logits [K, num_classes], out).
    label: a class index -> one image [H, W, C]; or labels [K] -> images [K, H, W, C].
    image_shape: (H, W, C) of one image.
    l2: lambda, the weight of ||I||^2 (per image).
    learning_rate: the step size of plain gradient ascent (optax.sgd).
    steps: the number of ascent steps, >= 1.
    optimizer: an optax transformation to use instead of sgd(learning_rate); it
      minimizes the negative objective.
    jitter: roll the image by up to this many pixels (uniform, both axes) at each
      step; 0 (default, the paper) turns it off.
    blur_every: blur the image every this many steps; 0 (default, the paper) never.
    blur_sigma: the blur's Gaussian sigma in pixels.
    seed: seeds the jitter; the start, the zero image, is deterministic.
    progress: show a tqdm bar (one jitted step per iteration) instead of running
      all steps in one `lax.scan`; the results are the same.
    return_objectives: also return the objective before each step, [steps] or
      [steps, K] (with jitter, of the rolled image the step saw).

  Returns the image(s) in the model's input space, float32; with
  `return_objectives`, a pair (images, objectives).
  """
  shape = _check_image_shape(image_shape)
  steps = _int_at_least(steps, 1, "steps")
  jitter = _int_at_least(jitter, 0, "jitter")
  blur_every = _int_at_least(blur_every, 0, "blur_every")
  if not float(l2) >= 0:
    raise ValueError(f"class_model: l2 must be >= 0; received {l2!r}.")
  if optimizer is None and not float(learning_rate) > 0:
    raise ValueError(f"class_model: learning_rate must be > 0; received {learning_rate!r}.")
  if blur_every and not float(blur_sigma) > 0:
    raise ValueError(f"class_model: blur_sigma must be > 0 to blur; received {blur_sigma!r}.")
  labels = np.asarray(label)
  single = labels.ndim == 0
  if labels.ndim > 1:
    raise ValueError(
      f"class_model: label must be one class index or a vector [K] of them; received shape "
      f"{labels.shape}."
    )
  logits = jax.eval_shape(lambda x: _logits(model_fn, x), jax.ShapeDtypeStruct((1, *shape), "f4"))
  if len(logits.shape) != 2 or logits.shape[0] != 1:
    raise ValueError(
      f"class_model: model_fn must return logits of shape [N, num_classes] = (1, K) for one "
      f"image; received shape {tuple(logits.shape)}."
    )
  check_label(labels, logits.shape[-1], fn="class_model")
  labels = jnp.asarray(labels.reshape(-1), jnp.int32)
  tx = optimizer if optimizer is not None else optax.sgd(learning_rate)

  def loss(images, shift):
    seen = jnp.roll(images, shift, axis=(1, 2)) if jitter else images
    # The L2 term is roll-invariant; the score's gradient is rolled back by autodiff.
    values = objective(model_fn, seen, labels, l2)
    return -jnp.sum(values), values

  def step(carry, t):
    images, opt_state, key = carry
    key, sub = jax.random.split(key)
    shift = jax.random.randint(sub, (2,), -jitter, jitter + 1)
    (_, values), grad = jax.value_and_grad(loss, has_aux=True)(images, shift)
    updates, opt_state = tx.update(grad, opt_state, images)
    images = optax.apply_updates(images, updates)
    if blur_every:
      images = jax.lax.cond(
        (t + 1) % blur_every == 0, lambda x: _blur(x, blur_sigma), lambda x: x, images
      )
    return (images, opt_state, key), values

  images = jnp.zeros((labels.shape[0], *shape), jnp.float32)
  carry = (images, tx.init(images), jax.random.PRNGKey(seed))
  if progress:
    step_fn = jax.jit(step)
    history = []
    for t in tqdm(range(steps), desc="class model", unit="step", dynamic_ncols=True):
      carry, values = step_fn(carry, t)
      history.append(values)
    history = jnp.stack(history)
  else:
    carry, history = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps)))(carry)
  images = carry[0]
  if single:
    images, history = images[0], history[:, 0]
  return (images, history) if return_objectives else images
