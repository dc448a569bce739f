"""Image-specific class saliency (Simonyan, Vedaldi & Zisserman 2013, Section 3).

Near an image I0 the class score is approximately linear, S_c(I) ~ w^T I + b
with w = dS_c/dI at I0 (eqs. 2-3): the pixels whose change moves the score most
are where the class is. The saliency map takes, per pixel, the largest
absolute derivative over the colour channels (eq. 4):

    M[i, j] = max_ch |w[i, j, ch]|

S_c is the unnormalized class score (the logit), not the softmax probability,
whose derivative also depends on the other classes. One backward pass gives the
map, against one per occluder position for occlusion.

`model_fn(images [N, H, W, C]) -> (logits [N, K], out)` is a model in eval
mode, e.g. `functools.partial(model.apply, variables)`. `saliency` and
`saliency_batch` are pure and run under `jax.jit`; `saliency_box` (weakly
supervised localization) is host-side numpy; `pointing_game` is jnp.

Boxes are (x1, y1, x2, y2) in pixel-edge coordinates, as in torchvision: pixel
(row i, column j) covers [j, j + 1) x [i, i + 1), so a box around columns 3..5
has x1 = 3, x2 = 6 and its area counts its pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from skimage import measure, morphology, segmentation

from research.interpret.checks import check_image, check_label

__all__ = [
  "score_gradient",
  "saliency",
  "saliency_batch",
  "saliency_box",
  "pointing_game",
]


def _check_batch(images, fn: str) -> None:
  shape = tuple(np.shape(images))
  if len(shape) != 4:
    raise ValueError(
      f"{fn}: images must be a batch of shape [N, H, W, C]; received shape {shape} "
      f"(rank {len(shape)})."
    )


def _logits(model_fn, images):
  result = model_fn(images)
  # The contract is (logits, out); a bare logits array is accepted too, and must not be
  # indexed with [0], which would silently take the first example's row.
  return result[0] if isinstance(result, tuple | list) else result


def _score_gradient(model_fn, images, labels, *, fn: str, name: str, single=False) -> jax.Array:
  """The gradient of each image's labelled logit; errors name `fn` and `name` (the labels)."""
  shape = tuple(np.shape(images))
  labels = labels if isinstance(labels, jax.Array) else jnp.asarray(labels)
  if labels.shape != shape[:1]:
    raise ValueError(
      f"{fn}: {name} must have shape [N] = ({shape[0]},), one per image; received shape "
      f"{tuple(labels.shape)}."
    )
  images = jnp.asarray(images)
  if not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  logits, pullback = jax.vjp(lambda x: _logits(model_fn, x), images)
  if logits.ndim != 2 or logits.shape[0] != shape[0]:
    raise ValueError(
      f"{fn}: model_fn must return logits of shape [N, K] = ({shape[0]}, K); received shape "
      f"{tuple(logits.shape)}."
    )
  check_label(labels[0] if single else labels, logits.shape[-1], name=name, fn=fn)
  (grad,) = pullback(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype))
  return grad


def score_gradient(model_fn, images, labels) -> jax.Array:
  """w = dS_c/dI (eq. 3) per example: images [N, H, W, C], labels [N] int -> [N, H, W, C].

  One vector-Jacobian product with the one-hot labels as cotangent, i.e. the
  gradient of sum_n S_{labels[n]}(images[n]): each example's gradient is its own
  provided the model treats examples independently (eval mode, no batch
  statistics).
  """
  _check_batch(images, "score_gradient")
  return _score_gradient(model_fn, images, labels, fn="score_gradient", name="labels")


def saliency_batch(model_fn, images, labels) -> jax.Array:
  """Saliency maps (eq. 4): images [N, H, W, C], labels [N] int -> [N, H, W] float."""
  _check_batch(images, "saliency_batch")
  grad = _score_gradient(model_fn, images, labels, fn="saliency_batch", name="labels")
  return jnp.max(jnp.abs(grad), axis=-1)


def saliency(model_fn, image, label) -> jax.Array:
  """The saliency map of one image (eq. 4): image [H, W, C], label int -> [H, W] float.

  M[i, j] = max over channels of |dS_label / dI| at `image`. Raises ValueError
  for an image that is not [H, W, C] or a label outside [0, K), K the number of
  logits (the label's range is checked only when it is concrete, not under jit).
  """
  check_image(image, fn="saliency")
  label = label if isinstance(label, jax.Array) else jnp.asarray(label)
  if label.ndim != 0:
    raise ValueError(
      f"saliency: label must be one integer class index (a scalar); received shape "
      f"{tuple(label.shape)}. Use saliency_batch for a batch."
    )
  grad = _score_gradient(
    model_fn, jnp.asarray(image)[None], label[None], fn="saliency", name="label", single=True
  )
  return jnp.max(jnp.abs(grad[0]), axis=-1)


def saliency_box(
  saliency_map,
  image=None,
  *,
  quantile: float = 0.95,
  background_quantile: float = 0.30,
  dilation: float = 0.0,
  beta: float = 130.0,
) -> np.ndarray:
  """Weakly supervised localization from a saliency map: [H, W] -> box [4] (x1, y1, x2, y2).

  Pixels above the `quantile` of the map (at it, if none is above) are
  foreground. Without an image, the foreground is just that thresholded map;
  each of its 8-connected components (after joining components closer than
  `dilation` pixels) is a candidate, and the box bounds the foreground pixels of
  the largest one (most pixels, ties by total saliency). The box is never
  empty, since the map's maximum is always foreground.

  With `image` [H, W, C] (the paper's setting), the quantile pixels are
  foreground seeds, those below `background_quantile` background seeds, and the
  rest is labelled by a colour segmentation from those seeds before the largest
  component is taken, so the box grows to the object's colour region around
  its most salient part.

  How it differs from the paper: Simonyan et al. fit colour models to the seeds
  and segment with GraphCut; here the seeded segmentation is scikit-image's
  random walker (`beta` weights colour edges), which also labels unknown pixels
  from the seeds and the image's colour edges but has no colour model. Without
  an image there is no segmentation at all, which gives a tighter box around
  only the most salient pixels.
  """
  m = np.asarray(saliency_map, dtype=np.float64)
  if m.ndim != 2:
    raise ValueError(
      f"saliency_box: saliency_map must be one map of shape [H, W]; received shape {m.shape}."
    )
  if not 0.0 < quantile < 1.0:
    raise ValueError(f"saliency_box: quantile must lie in (0, 1); received {quantile}.")
  if dilation < 0:
    raise ValueError(f"saliency_box: dilation must be >= 0 pixels; received {dilation}.")
  threshold = np.quantile(m, quantile)
  # Strictly above, so that a map that is mostly zeros does not make every zero foreground;
  # only where nothing is above (a flat top) do the pixels equal to it count.
  foreground = m > threshold
  if not foreground.any():
    foreground = m >= threshold
  if image is not None:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[:2] != m.shape:
      raise ValueError(
        f"saliency_box: image must be [H, W, C] with the map's H, W = {m.shape}; received "
        f"shape {image.shape}."
      )
    if not 0.0 < background_quantile < quantile:
      raise ValueError(
        f"saliency_box: background_quantile must lie in (0, quantile={quantile}); received "
        f"{background_quantile}."
      )
    seeds = np.zeros(m.shape, np.int32)  # 0: unknown, 1: object, 2: background
    seeds[m < np.quantile(m, background_quantile)] = 2
    seeds[foreground] = 1
    if (seeds == 2).any():  # a flat map has no background seeds: keep the threshold
      span = image.max() - image.min()
      data = (image - image.min()) / (span if span > 0 else 1.0)
      # Brute force (a sparse LU solve) is exact and fast at ImageNet sizes; the iterative
      # modes warn about tolerance on such small problems.
      labels = segmentation.random_walker(data, seeds, beta=beta, mode="bf", channel_axis=-1)
      foreground = labels == 1
  grouped = morphology.isotropic_dilation(foreground, dilation) if dilation > 0 else foreground
  components = measure.label(grouped, connectivity=2)
  components = np.where(foreground, components, 0)
  count = np.bincount(components.ravel())
  mass = np.bincount(components.ravel(), weights=m.ravel())
  count[0], mass[0] = -1, -np.inf  # background is not a candidate
  largest = np.lexsort((-mass, -count))[0]  # most pixels, then most saliency
  rows, cols = np.nonzero(components == largest)
  return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


def pointing_game(saliency_maps, boxes, *, tolerance: float = 0.0) -> jax.Array:
  """Whether each map's maximum points into its box: maps [N, H, W], boxes [N, 4] -> [N] bool.

  A hit when the centre (j + 0.5, i + 0.5) of the argmax pixel (row i, column j;
  the first in row-major order on ties) lies in the closed box
  [x1, x2] x [y1, y2], boundary included, or within `tolerance` pixels of it
  (Zhang et al. 2016 allow 15 at 224x224). A box (x1, y1, x2, y2) in
  pixel-edge coordinates thus holds columns x1 .. x2 - 1 for integer corners.
  The mean of the result is the pointing accuracy.
  """
  maps_shape, boxes_shape = tuple(np.shape(saliency_maps)), tuple(np.shape(boxes))
  if len(maps_shape) != 3:
    raise ValueError(
      f"pointing_game: saliency_maps must be [N, H, W]; received shape {maps_shape}."
    )
  if boxes_shape != (maps_shape[0], 4):
    raise ValueError(
      f"pointing_game: boxes must be [N, 4] = ({maps_shape[0]}, 4), one (x1, y1, x2, y2) per "
      f"map; received shape {boxes_shape}."
    )
  maps, boxes = jnp.asarray(saliency_maps), jnp.asarray(boxes, jnp.float32)
  flat = jnp.argmax(maps.reshape(maps.shape[0], -1), axis=-1)
  y = (flat // maps.shape[2]).astype(jnp.float32) + 0.5
  x = (flat % maps.shape[2]).astype(jnp.float32) + 0.5
  dx = jnp.maximum(jnp.maximum(boxes[:, 0] - x, x - boxes[:, 2]), 0.0)
  dy = jnp.maximum(jnp.maximum(boxes[:, 1] - y, y - boxes[:, 3]), 0.0)
  return dx**2 + dy**2 <= jnp.float32(tolerance) ** 2
