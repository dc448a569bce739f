"""The deconvnet of Zeiler & Fergus (2013, Section 2.1): projecting one unit down to pixels.

To see what a unit responds to, keep its activation, zero every other
activation of its layer and go down: through a max pool by unpooling (each
value goes back to the position its switch recorded), through a ReLU by
rectifying the reconstruction, through a convolution by filtering with the
same filters transposed. Each of these steps is what back-propagation does,
except the ReLU: back-propagation masks by where the forward input was
positive, the deconvnet rectifies the signal coming down. So the projection
is the vector-Jacobian product of the layer, taken with ReLU's backward rule
replaced by `max(g, 0)` (as Captum's `NeuronDeconvolution` does), applied to
the one-hot cotangent scaled by the unit's activation. Switches are those of
the forward pass on the image, as in the paper. The rewrite happens on the
traced program, so it serves every model of the project; layers the paper
does not have are passed by their gradient (AlexNet's LRN, LeNet-5's tanh and
average pools, which unpool by spreading evenly).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from research.interpret import graph, receptive_field
from research.interpret.checks import check_image


@jax.custom_vjp
def rectified_relu(x: jax.Array) -> jax.Array:
  """ReLU forward; backward rectifies the incoming signal instead of masking it."""
  return jnp.maximum(x, 0)


def _rectified_fwd(x):
  return jnp.maximum(x, 0), None


def _rectified_bwd(_, g):
  return (jnp.maximum(g, 0),)


rectified_relu.defvjp(_rectified_fwd, _rectified_bwd)


def _deconv_rule(eqn, invals):
  if graph.is_relu(eqn):
    x = next(v for v in invals if jnp.ndim(v) > 0)
    return [rectified_relu(x)]
  return None


def deconvnet_fn(fn):
  """`fn` with every ReLU's backward rule replaced by the deconvnet's rectification.

  fn: a function of one array (e.g. image -> layer activations). The result
  traces `fn` at the shape of its argument and evaluates the rewritten program.
  """

  def rewritten(x):
    closed = graph.trace(fn, x)
    (out,) = graph.evaluate(closed, [x], _deconv_rule)
    return out

  return rewritten


def _check_channel(channel: int, channels: int) -> None:
  if not 0 <= int(channel) < channels:
    raise ValueError(f"channel: expected an integer in [0, {channels}), got {channel}.")


def _layer_fn(model, variables, layer):
  return lambda x: model.apply(variables, x[None])[1][layer][0]


@functools.partial(jax.jit, static_argnames=("model", "layer"))
def project_units(model, variables, images, *, layer, channels, positions):
  """Deconvnet projections of given units, one per image.

  images: [K, H, W, C]; channels: [K] int; positions: [K, 2] int (row, column)
  of the unit in the layer's map. Returns [K, H, W, C], each the projection of
  that unit with its activation kept and every other activation zeroed.
  """

  def one(image, channel, position):
    fn = deconvnet_fn(_layer_fn(model, variables, layer))
    y, pullback = jax.vjp(fn, image)
    if y.ndim == 3:
      onehot = jnp.zeros(y.shape, y.dtype).at[position[0], position[1], channel].set(1.0)
    else:  # A dense layer's unit: no position.
      onehot = jnp.zeros(y.shape, y.dtype).at[channel].set(1.0)
    (rec,) = pullback(onehot * y)
    return rec

  return jax.vmap(one)(images, channels, positions)


@functools.partial(jax.jit, static_argnames=("model", "layer"))
def _activations(model, variables, images, *, layer):
  return model.apply(variables, images)[1][layer]


def strongest_units(model, variables, images, *, layer):
  """Activation maps of `layer` and, per image and channel, the strongest unit.

  images: [N, H, W, C]. Returns (values [N, F], positions [N, F, 2]) over the F
  channels; a dense layer's units have position (0, 0).
  """
  try:
    acts = _activations(model, variables, images, layer=layer)
  except KeyError:  # Traced only when compiling; name the valid layers then.
    graph.check_layer(model, variables, tuple(images.shape[1:]), layer)
    raise
  if acts.ndim == 2:
    return acts, jnp.zeros((*acts.shape, 2), jnp.int32)
  n, h, w, f = acts.shape
  flat = acts.reshape(n, h * w, f)
  index = jnp.argmax(flat, axis=1)
  return jnp.max(flat, axis=1), jnp.stack([index // w, index % w], axis=-1)


def project(model, variables, image, *, layer: str, channel: int) -> jax.Array:
  """The deconvnet reconstruction of the strongest unit of one feature map.

  image: [H, W, C] as the model takes it; layer: a name of the model's `out`
  dict (e.g. "relu3", "pool5"); channel: the feature map. Returns [H, W, C].
  """
  check_image(image)
  values, positions = strongest_units(model, variables, image[None], layer=layer)
  _check_channel(channel, values.shape[-1])
  return project_units(
    model,
    variables,
    image[None],
    layer=layer,
    channels=jnp.asarray([channel]),
    positions=positions[:, channel],
  )[0]


def top_activations(
  model, variables, images, *, layer: str, channels, k: int = 9, batch_size: int = 64
) -> dict:
  """Zeiler & Fergus Fig. 2: per feature map, the k strongest units over a data set.

  images: [N, H, W, C] (an array or anything indexable by slices), the model's
  input. channels: the feature maps to mine. For each, the k images whose
  strongest unit in that map is largest, and for each of those its image patch
  and deconvnet projection cropped to the unit's receptive field.

  Returns a dict of numpy arrays, F = len(channels):
    values [F, k], image_index [F, k], position [F, k, 2] (row, col in the map),
    box [F, k, 4] (y0, x0, y1, x1) receptive field in the image, y1/x1 exclusive,
    patches [F, k, rh, rw, C], projections [F, k, rh, rw, C], the latter two
    zero outside the image, and inside_energy [F, k]: the fraction of each full
    projection's squared norm inside the box.
  """
  n = len(images)
  image_shape = tuple(images[0:1].shape[1:])
  if len(image_shape) != 3:
    raise ValueError(f"images: expected [N, H, W, C], got shape {images[0:1].shape}.")
  channels = np.asarray(channels, np.int64).reshape(-1)
  if k < 1 or k > n:
    raise ValueError(f"k: expected 1 <= k <= the number of images ({n}), got {k}.")
  field = receptive_field.receptive_field(model, variables, image_shape, layer)

  all_values, all_positions = [], []
  for start in tqdm(range(0, n, batch_size), desc=f"top activations {layer}", leave=False):
    batch = jnp.asarray(images[start : start + batch_size])
    values, positions = strongest_units(model, variables, batch, layer=layer)
    if start == 0:
      for c in channels:
        _check_channel(c, values.shape[-1])
    all_values.append(np.asarray(values[:, channels]))
    all_positions.append(np.asarray(positions[:, channels]))
  values = np.concatenate(all_values).T  # [F, N]
  positions = np.concatenate(all_positions).transpose(1, 0, 2)  # [F, N, 2]
  order = np.argsort(-values, axis=1, kind="stable")[:, :k]
  top_values = np.take_along_axis(values, order, axis=1)
  top_positions = np.take_along_axis(positions, order[..., None], axis=1)

  picked = np.stack([np.asarray(images[i : i + 1])[0] for i in order.reshape(-1)])
  projections = np.asarray(
    project_units(
      model,
      variables,
      jnp.asarray(picked),
      layer=layer,
      channels=jnp.asarray(np.repeat(channels, k)),
      positions=jnp.asarray(top_positions.reshape(-1, 2)),
    )
  )
  boxes = np.array(
    [field.box(int(r), int(c), image_shape[:2]) for r, c in top_positions.reshape(-1, 2)]
  )
  patches = np.stack([receptive_field.crop(im, b) for im, b in zip(picked, boxes, strict=True)])
  crops = np.stack([receptive_field.crop(p, b) for p, b in zip(projections, boxes, strict=True)])
  total = np.square(projections).sum(axis=(1, 2, 3))
  inside = np.square(crops).sum(axis=(1, 2, 3))
  f = len(channels)
  return {
    "values": top_values,
    "image_index": order,
    "position": top_positions,
    "box": boxes.reshape(f, k, 4),
    "patches": patches.reshape(f, k, *patches.shape[1:]),
    "projections": crops.reshape(f, k, *crops.shape[1:]),
    "inside_energy": np.where(total > 0, inside / np.maximum(total, 1e-30), 1.0).reshape(f, k),
  }
