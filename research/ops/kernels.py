"""Handcrafted filters, the engineered features that conv layers learned to replace.

Every function returns a float32 [kh, kw] array meant for
`research.ops.conv.correlate2d` (no flip). Orientation convention: rows grow
downwards and columns grow to the right, so under correlate2d

- `sobel_x` responds to intensity change along x (horizontal change, i.e.
  vertical edges) and is positive where intensity increases to the right;
- `sobel_y` responds to change along y (horizontal edges) and is positive where
  intensity increases downwards.

Sums: box and gaussian sum to 1 (they average, keeping brightness), sharpen and
emboss sum to 1 (they keep flat regions as they are), sobel and laplacian sum
to 0 (flat regions give no response).
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "box",
  "gaussian",
  "sharpen",
  "sobel_x",
  "sobel_y",
  "laplacian",
  "emboss",
  "bilinear_upsampling",
  "KERNELS",
]


def _odd_size(size, fn: str) -> int:
  try:
    size = operator.index(size)
  except TypeError:
    raise ValueError(f"{fn}: size must be a positive odd int, got {size!r}") from None
  # An odd size gives the kernel a centre pixel, so filtering does not shift the image.
  if size < 1 or size % 2 == 0:
    raise ValueError(f"{fn}: size must be a positive odd int, got size={size}")
  return size


def box(size: int = 3) -> jax.Array:
  """Mean filter: [size, size], every weight 1 / size**2. size: positive odd."""
  size = _odd_size(size, "box")
  return jnp.full((size, size), 1.0 / size**2, jnp.float32)


def gaussian(size: int = 5, sigma: float = 1.0) -> jax.Array:
  """Gaussian blur: [size, size], weights exp(-(y**2 + x**2) / (2 sigma**2)), summing to 1.

  size: positive odd; sigma > 0. Separable: the outer product of the
  normalized 1-D gaussian with itself.
  """
  size = _odd_size(size, "gaussian")
  if not float(sigma) > 0:
    raise ValueError(f"gaussian: sigma must be > 0, got sigma={sigma}")
  r = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-(r**2) / (2.0 * float(sigma) ** 2))
  g /= g.sum()
  return jnp.asarray(np.outer(g, g), jnp.float32)


def sharpen() -> jax.Array:
  """Sharpen: [3, 3], the image plus its negative Laplacian; sums to 1."""
  return jnp.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], jnp.float32)


def sobel_x() -> jax.Array:
  """Sobel x-derivative: [3, 3]; vertical edges, positive where intensity rises to the right."""
  return jnp.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], jnp.float32)


def sobel_y() -> jax.Array:
  """Sobel y-derivative: [3, 3]; horizontal edges, positive where intensity rises downwards."""
  return jnp.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], jnp.float32)


def laplacian() -> jax.Array:
  """4-neighbour Laplacian: [3, 3], second derivative in x plus y; sums to 0."""
  return jnp.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], jnp.float32)


def emboss() -> jax.Array:
  """Emboss: [3, 3], a diagonal derivative plus the image (relief lit from the top left).

  Sums to 1, so flat regions keep their value.
  """
  return jnp.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], jnp.float32)


def bilinear_upsampling(factor: int) -> jax.Array:
  """The bilinear upsampling kernel of an integer `factor`: [k, k], k = 2 factor - factor % 2
  (FCN's initialization of its transposed convolutions, Long et al. 2015, Section 3.3).

  A transposed convolution of stride `factor` with this kernel (padding factor // 2 for
  even factors: torch's ConvTranspose2d(k, factor, padding=factor // 2)) is bilinear
  interpolation with half-pixel centres away from the border. Not in `KERNELS`, which holds
  filters for correlate2d.
  """
  if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
    raise ValueError(f"bilinear_upsampling: factor must be an int >= 1; received {factor!r}.")
  size = 2 * factor - factor % 2
  centre = factor - 1 if size % 2 == 1 else factor - 0.5
  ramp = 1 - np.abs(np.arange(size) - centre) / factor
  return jnp.asarray(np.outer(ramp, ramp), jnp.float32)


KERNELS = {
  "box": box,
  "gaussian": gaussian,
  "sharpen": sharpen,
  "sobel_x": sobel_x,
  "sobel_y": sobel_y,
  "laplacian": laplacian,
  "emboss": emboss,
}
