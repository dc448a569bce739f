"""digit_scenes: the real builder, prepared once per module into a temporary data dir."""

import hashlib

import numpy as np
import pytest

from research.data import datasets, digit_scenes, pipeline, transforms

SINGLE_KEYS = {"image", "label", "box", "mask", "digit_id", "fragment_ids"}
MULTI_KEYS = {
  "image",
  "boxes",
  "labels",
  "num_objects",
  "instance_masks",
  "semantic_mask",
  "digit_ids",
  "fragment_ids",
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """{(config, split): data source} for both configs, prepared through datasets.data_source."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return {
    (config, split): datasets.data_source(f"digit_scenes/{config}", split, data_dir=data_dir)
    for config in ("single", "multi")
    for split in ("train", "test")
  }


@pytest.fixture(scope="module")
def mnist():
  """(images uint8 [5000, 28, 28], labels [5000], {"train": ids, "test": ids})."""
  return digit_scenes.load_mnist5k()


def _records(source, n=None):
  return [source[i] for i in range(len(source) if n is None else n)]


def test_resize_keeps_flat_images_flat_and_28_pixels_unchanged():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (28, 28), dtype=np.uint8)
  np.testing.assert_array_equal(digit_scenes.resize(image, 28), image)
  for side in (20, 33, 40):
    out = digit_scenes.resize(np.full((28, 28), 200, np.uint8), side)
    assert out.shape == (side, side) and (out == 200).all()


def test_ink_box_is_in_pixel_edges():
  mask = np.zeros((10, 12), bool)
  mask[2:5, 3] = mask[4, 7] = True
  np.testing.assert_array_equal(digit_scenes.ink_box(mask), [3, 2, 8, 5])


def test_single_sizes_shapes_and_balanced_labels(sources):
  train, test = sources["single", "train"], sources["single", "test"]
  assert (len(train), len(test)) == (8000, 1000)
  record = test[0]
  assert set(record) == SINGLE_KEYS
  assert record["image"].shape == record["mask"].shape == (64, 64, 1)
  assert record["image"].dtype == record["mask"].dtype == np.uint8
  assert record["box"].shape == (4,) and record["box"].dtype == np.float32
  assert record["fragment_ids"].shape == (5,)
  # Each test digit is used once, each train digit twice: mnist5k's balance.
  np.testing.assert_array_equal(np.bincount([r["label"] for r in _records(test)]), [100] * 10)
  train_labels = np.bincount([train[i]["label"] for i in range(0, 8000, 4)], minlength=10)
  assert train_labels.sum() == 2000 and train_labels.min() >= 160


def test_single_box_is_the_tight_box_of_the_mask_and_the_mask_is_the_digits_ink(sources, mnist):
  images, labels, _ = mnist
  for record in _records(sources["single", "test"], 300):
    mask = record["mask"][..., 0].astype(bool)
    assert set(np.unique(record["mask"])) == {0, 1}
    np.testing.assert_array_equal(record["box"], digit_scenes.ink_box(mask))
    # The digit is drawn over the clutter: its ink is at least 128**2 / 255 = 64 bright.
    assert record["image"][..., 0][mask].min() >= 64
    assert record["label"] == labels[record["digit_id"]]
    # The mask is the digit's own ink: mask pixels match its resized 28x28 image.
    x1, y1, x2, y2 = record["box"].astype(int)
    ink = mask[y1:y2, x1:x2]
    assert ink.sum() >= 20
    side = [s for s in range(20, 41) if _ink_matches(images[record["digit_id"]], s, ink)]
    assert side, f"no scale of digit {record['digit_id']} gives this mask"
    fragments = record["fragment_ids"]
    assert 2 <= (fragments >= 0).sum() <= 5 and record["digit_id"] not in fragments


def _ink_matches(digit, side, ink):
  full = digit_scenes.resize(digit, side) >= digit_scenes.INK
  if not full.any():
    return False
  x1, y1, x2, y2 = digit_scenes.ink_box(full).astype(int)
  return full[y1:y2, x1:x2].shape == ink.shape and (full[y1:y2, x1:x2] == ink).all()


def test_train_and_test_scenes_use_disjoint_digits(sources, mnist):
  _, _, pools = mnist
  assert not set(pools["train"]) & set(pools["test"])
  used = {}
  for (config, split), source in sources.items():
    digits, fragments = set(), set()
    for record in _records(source):
      ids = np.atleast_1d(record["digit_id" if config == "single" else "digit_ids"])
      digits.update(ids[ids >= 0].tolist())
      fragments.update(record["fragment_ids"][record["fragment_ids"] >= 0].tolist())
    assert digits | fragments <= set(pools[split].tolist()), (config, split)
    used[config, split] = digits
  # Single scenes use every digit of their split.
  assert used["single", "train"] == set(pools["train"].tolist())
  assert used["single", "test"] == set(pools["test"].tolist())


def test_multi_counts_padding_boxes_and_masks(sources):
  source = sources["multi", "test"]
  assert (len(sources["multi", "train"]), len(source)) == (4000, 500)
  records = _records(source, 300)
  assert set(records[0]) == MULTI_KEYS
  counts = np.array([r["num_objects"] for r in records])
  assert counts.min() == 1 and counts.max() == 5 and len(np.unique(counts)) == 5
  for r in records:
    n = int(r["num_objects"])
    assert r["image"].shape == r["semantic_mask"].shape == (128, 128, 1)
    assert r["instance_masks"].shape == (5, 128, 128) and r["instance_masks"].dtype == np.uint8
    assert r["boxes"].shape == (5, 4) and r["boxes"].dtype == np.float32
    assert ((r["labels"][:n] >= 0) & (r["labels"][:n] < 10)).all()
    assert (r["labels"][n:] == -1).all() and (r["digit_ids"][n:] == -1).all()
    assert (r["boxes"][n:] == 0).all() and not r["instance_masks"][n:].any()
    assert len(set(r["digit_ids"][:n].tolist())) == n
    masks = r["instance_masks"][:n].astype(bool)
    # Visible pixels: every pixel belongs to at most one digit, and every digit shows some ink.
    assert masks.sum(0).max() <= 1 and masks.reshape(n, -1).sum(1).min() >= 10
    for mask, box in zip(masks, r["boxes"][:n]):
      np.testing.assert_array_equal(box, digit_scenes.ink_box(mask))
    semantic = (masks * (r["labels"][:n, None, None] + 1)).sum(0)
    np.testing.assert_array_equal(r["semantic_mask"][..., 0], semantic)
    for i in range(n):
      for j in range(i):
        assert digit_scenes._overlaps(r["boxes"][i], r["boxes"][j])[0] <= 0.3


def _digest(records) -> str:
  h = hashlib.sha256()
  for r in records:
    for key in sorted(r):
      h.update(np.ascontiguousarray(r[key]).tobytes())
  return h.hexdigest()[:16]


def test_preparation_is_deterministic(sources, mnist):
  images, labels, pools = mnist
  for (config, split), source in sources.items():
    # A second generation, from scratch, gives the stored records byte for byte.
    again = digit_scenes.generate(digit_scenes.CONFIGS[config], split, images, labels, pools[split])
    for i, (index, record) in zip(range(3), again):
      stored = source[i]
      assert index == i and set(stored) == set(record)
      for key in record:
        assert np.asarray(stored[key]).tobytes() == np.asarray(record[key]).tobytes(), key
  # The same arrays on every machine: integer arithmetic from seeded generators.
  assert _digest(_records(sources["single", "test"], 3)) == SINGLE_TEST_DIGEST
  assert _digest(_records(sources["multi", "test"], 3)) == MULTI_TEST_DIGEST


SINGLE_TEST_DIGEST = "c64c7c1a01384cd4"
MULTI_TEST_DIGEST = "58a7a765b76b96dd"


def test_unknown_config_or_data_set_lists_the_valid_names(tmp_path):
  with pytest.raises(ValueError, match=r"unknown digit_scenes config 'triple'.*'multi', 'single'"):
    digit_scenes.DigitScenes(data_dir=str(tmp_path), config="triple")
  with pytest.raises(ValueError, match=r"'digit_scenes/triple'.*'digit_scenes/multi'"):
    datasets.data_source("digit_scenes/triple", "test", data_dir=str(tmp_path))


def test_the_classification_pipeline_reads_single_scenes(sources):
  transform = transforms.ClassificationTransform(num_classes=10)
  it = pipeline.train_iterator(
    sources["single", "train"], global_batch_size=16, seed=0, transform=transform
  )
  batch = next(it)
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (16, 64, 64, 1) and batch["image"].dtype == np.float32
  evals = list(
    pipeline.eval_batches(sources["single", "test"], global_batch_size=300, transform=transform)
  )
  assert [int(b["mask"].sum()) for b in evals] == [300, 300, 300, 100]
  assert evals[0]["mask"].shape == (300,)
  # A transform that passes the records' pixel mask through would lose it to the validity mask.
  with pytest.raises(ValueError, match="'mask' key"):
    next(pipeline.eval_batches(sources["single", "test"], global_batch_size=4, transform=dict))
