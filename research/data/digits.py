"""`digits`: scikit-learn's 1,797 8x8 handwritten digits, as a TFDS data set.

Pixel values 0-16 are rescaled to 0-255 uint8. A fixed stratified split puts
360 images (20%) in test and 1,437 in train.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from research.data.mnist5k import split_indices

TEST_SIZE = 360
SPLIT_SEED = 0


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's digits: 8x8x1 uint8 images, labels 0-9."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "1,437/360 stratified split of sklearn.datasets.load_digits()."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships inside scikit-learn.
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    data = load_digits()
    # 0..16 -> 0..255, rounding so that the 17 levels stay distinct.
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    train, test = split_indices(data.target, TEST_SIZE, SPLIT_SEED)
    return {
      "train": self._generate_examples(images[train], data.target[train], train),
      "test": self._generate_examples(images[test], data.target[test], test),
    }

  def _generate_examples(self, images, labels, ids):
    for image, label, i in zip(images, labels, ids):
      yield int(i), {"image": image, "label": int(label)}
