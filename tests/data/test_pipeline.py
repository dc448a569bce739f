"""The grain pipeline: seeded shuffling, resumable iterators, sharding, padded evaluation."""

import jax
import numpy as np
import pytest

from research.data import pipeline, transforms


class ArraySource:
  """A random-access source of n records whose image encodes the record index."""

  def __init__(self, n, num_classes=10):
    self.n, self.num_classes = n, num_classes

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {
      "image": np.full((2, 2, 1), i % 256, np.uint8),
      "label": i % self.num_classes,
      "index": i,
    }


def _ids(batch):
  return [int(i) for i in batch["index"]]


def identity(batch):
  return batch


def test_one_epoch_sees_every_record_once_and_epochs_reshuffle():
  it = pipeline.train_iterator(ArraySource(40), global_batch_size=8, seed=1, transform=identity)
  first = sum((_ids(next(it)) for _ in range(5)), [])
  second = sum((_ids(next(it)) for _ in range(5)), [])
  assert sorted(first) == list(range(40)) == sorted(second)
  assert first != second != list(range(40))


def test_same_seed_same_order_and_other_seed_other_order():
  runs = [
    pipeline.train_iterator(ArraySource(40), global_batch_size=8, seed=s, transform=identity)
    for s in (3, 3, 4)
  ]
  a, b, c = ([_ids(next(it)) for _ in range(3)] for it in runs)
  assert a == b and a != c


def test_iterator_state_resumes_the_same_batches():
  it = pipeline.train_iterator(
    ArraySource(40),
    global_batch_size=8,
    seed=0,
    transform=identity,
    random_transform=transforms.RandomShift(1),
  )
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  fresh = pipeline.train_iterator(
    ArraySource(40),
    global_batch_size=8,
    seed=0,
    transform=identity,
    random_transform=transforms.RandomShift(1),
  )
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    assert _ids(got) == _ids(want)
    np.testing.assert_array_equal(got["image"], want["image"])


def _scaled(image, rngs):
  return {"image": image * np.array([r.integers(1, 1000) for r in rngs])[:, None, None, None]}


def test_processes_split_each_global_batch_exactly_as_one_process_sees_it(monkeypatch):
  augment = lambda batch, rngs: {**batch, **_scaled(batch["image"], rngs)}
  one = pipeline.train_iterator(
    ArraySource(40), global_batch_size=8, seed=0, transform=identity, random_transform=augment
  )
  whole = [next(one) for _ in range(6)]
  parts = []
  for index in range(2):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    it = pipeline.train_iterator(
      ArraySource(40), global_batch_size=8, seed=0, transform=identity, random_transform=augment
    )
    parts.append([next(it) for _ in range(6)])
  for w, a, b in zip(whole, *parts):
    assert len(a["index"]) == len(b["index"]) == 4
    assert _ids(w) == _ids(a) + _ids(b)
    np.testing.assert_array_equal(w["image"], np.concatenate([a["image"], b["image"]]))
  first_epoch = sum((_ids(a) + _ids(b) for a, b in zip(*parts)), [])[:40]
  assert sorted(first_epoch) == list(range(40))


def test_eval_batches_cover_every_record_once_with_a_mask():
  batches = list(pipeline.eval_batches(ArraySource(23), global_batch_size=10, transform=identity))
  assert [b["mask"].sum() for b in batches] == [10, 10, 3]
  ids = [i for b in batches for i, m in zip(_ids(b), b["mask"]) if m]
  assert ids == list(range(23))


def test_batch_size_must_split_over_processes(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match="multiple of the process count 3; received 8"):
    pipeline.local_batch_size(8)


def test_labels_out_of_range_are_refused():
  t = transforms.ClassificationTransform(num_classes=5)
  batch = {"image": np.zeros((3, 2, 2, 1), np.uint8), "label": np.array([1, 7, 2])}
  with pytest.raises(ValueError, match=r"\[0, 5\).*received label 7"):
    t(batch)
  with pytest.raises(ValueError, match="received label -1"):
    t({**batch, "label": np.array([0, -1, 2])})


def test_classification_transform_pads_and_rescales():
  t = transforms.ClassificationTransform(num_classes=10, pad=2, value_range=(-0.1, 1.175))
  out = t(
    {"image": np.array([[[[0]], [[255]]]], np.uint8).reshape(1, 1, 2, 1), "label": np.array([3])}
  )
  assert out["image"].shape == (1, 5, 6, 1) and out["image"].dtype == np.float32
  np.testing.assert_allclose(out["image"][0, 2, 2:4, 0], [-0.1, 1.175], rtol=1e-6)
  assert out["image"][0, 0, 0, 0] == np.float32(-0.1)


def test_random_shift_moves_each_image_within_bounds():
  image = np.zeros((16, 9, 9, 1), np.float32)
  image[:, 4, 4] = 1.0
  rngs = [np.random.default_rng(i) for i in range(16)]
  out = transforms.RandomShift(2, fill=0.0)({"image": image}, rngs)
  assert out["image"].shape == image.shape
  positions = [tuple(np.argwhere(o[..., 0] == 1.0)[0]) for o in out["image"]]
  assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in positions)
  assert len(set(positions)) > 5
  np.testing.assert_array_equal(out["image"].sum((1, 2, 3)), np.ones(16))


def test_grey_digits_become_normalized_3_channel_upscaled_images():
  t = transforms.ClassificationTransform(
    num_classes=10, pad=1, channels=3, upscale=2, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0)
  )
  out = t({"image": np.array([[[[255], [0]]]], np.uint8), "label": np.array([4])})
  assert out["image"].shape == (1, 4, 6, 3)
  np.testing.assert_allclose(out["image"][0, 1, 1:3], [[1.0, 3.0, 1.0]] * 2)  # 255 upscaled
  np.testing.assert_allclose(out["image"][0, 1, 3:5], [[-1.0, -1.0, 0.0]] * 2)  # 0 upscaled
  np.testing.assert_allclose(out["image"][0, 0, 0], t.background)  # padding is black
  with pytest.raises(ValueError, match="input.channels: can repeat a 1-channel image"):
    t({"image": np.zeros((1, 2, 2, 2), np.uint8), "label": np.array([0])})


def test_random_flip_mirrors_about_half_the_images_reproducibly():
  image = np.arange(64 * 3, dtype=np.float32).reshape(64, 1, 3, 1)
  flip = lambda: transforms.RandomFlip()(
    {"image": image}, [np.random.default_rng((7, i)) for i in range(64)]
  )
  a, b = flip(), flip()
  np.testing.assert_array_equal(a["image"], b["image"])
  flipped = (a["image"] != image).any((1, 2, 3))
  np.testing.assert_array_equal(a["image"][flipped], image[flipped][:, :, ::-1])
  assert 20 <= flipped.sum() <= 44


def test_gaussian_noise_has_the_asked_spread_and_is_reproducible():
  image = np.full((8, 16, 16, 1), 2.0, np.float32)
  noisy = lambda: transforms.GaussianNoise(0.5)(
    {"image": image, "label": np.arange(8)}, [np.random.default_rng((3, i)) for i in range(8)]
  )
  a, b = noisy(), noisy()
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], np.arange(8))
  noise = a["image"] - image
  assert a["image"].dtype == np.float32 and abs(noise.mean()) < 0.05
  assert 0.47 < noise.std() < 0.53
  assert not np.allclose(noise[0], noise[1])  # each image its own noise


def test_gaussian_noise_probability_leaves_the_other_images_clean():
  image = np.zeros((64, 4, 4, 1), np.float32)
  out = transforms.GaussianNoise(1.0, probability=0.5)(
    {"image": image}, [np.random.default_rng((5, i)) for i in range(64)]
  )["image"]
  noised = (out != 0).any((1, 2, 3))
  assert 20 <= noised.sum() <= 44
  assert (out[noised] != 0).all()  # a noised image has noise in every pixel
