"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998), as the lecture notes print it.

    input 32x32x1 (28x28 MNIST padded by 2)
    C1  conv 6@5x5         -> 28x28x6,   tanh     156 parameters
    S2  avg pool 2x2 / 2   -> 14x14x6
    C3  conv 16@5x5        -> 10x10x16,  tanh   2,416
    S4  avg pool 2x2 / 2   -> 5x5x16
    C5  conv 120@5x5       -> 1x1x120,   tanh  48,120
    F6  linear 120 -> 84,                tanh  10,164
    output linear 84 -> 10                        850
                                           61,706 in all (10 classes)

How the paper differs: its S2/S4 are sub-sampling layers with a trainable
coefficient and bias per map, C3 connects to only some S2 maps (its Table I),
and the output layer is Euclidean RBF units with a scaled tanh before it. The
notes' simplified network, followed here, uses plain average pooling, full
connections and a linear layer trained with softmax cross-entropy.

Backbone: `num_classes=0` builds the convolutional part only (C1 to C5; no F6, no output
layer: the two fully connected layers are the classifier) and `__call__` returns
(None, out), out holding conv1 .. tanh3. `feature_strides`: conv1/tanh1 1, pool1 2,
conv2/tanh2 2, pool2 4, conv3/tanh3 4 (the convs are unpadded, so a map is smaller than
input / stride by the kernels' borders). With `dtype=jnp.bfloat16` the layers compute in
bfloat16; parameters stay float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models import check_num_classes, layers
from research.models.inputs import check_images


class LeNet5(nn.Module):
  """LeNet-5. `__call__(x [N, 32, 32, in_channels]) -> (logits [N, num_classes], out)`.

  `out` names every stage: conv1, tanh1, pool1 (C1, S2), conv2, tanh2, pool2
  (C3, S4), conv3, tanh3 (C5), fc1, tanh4 (F6), pre_logits and logits. num_classes 0:
  C1 to C5 only, returning (None, out).
  """

  num_classes: int = 10
  in_channels: int = 1
  dtype: Any = jnp.float32

  @property
  def feature_strides(self) -> dict[str, int]:
    """{name: stride in input pixels} of the spatial maps in `out`."""
    return {
      "conv1": 1, "tanh1": 1, "pool1": 2, "conv2": 2, "tanh2": 2, "pool2": 4, "conv3": 4,
      "tanh3": 4,
    }  # fmt: skip

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # LeNet-5 has neither dropout nor batch norm.
    check_num_classes(self.num_classes, "LeNet5")
    check_images(x, model="LeNet5", channels=self.in_channels, size=(32, 32))
    out = {}
    x = x.astype(self.dtype)
    for i, features in enumerate((6, 16), start=1):
      x = out[f"conv{i}"] = layers.Conv(
        features, (5, 5), padding="VALID", dtype=self.dtype, name=f"conv{i}"
      )(x)
      x = out[f"tanh{i}"] = jnp.tanh(x)
      x = out[f"pool{i}"] = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = out["conv3"] = layers.Conv(120, (5, 5), padding="VALID", dtype=self.dtype, name="conv3")(x)
    x = out["tanh3"] = jnp.tanh(x)
    if not self.num_classes:
      return None, out
    x = x.reshape(x.shape[0], -1)
    x = out["fc1"] = nn.Dense(84, dtype=self.dtype, name="fc1")(x)
    x = out["tanh4"] = out["pre_logits"] = jnp.tanh(x)
    logits = out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)
    return logits, out
