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
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models.inputs import check_images


class LeNet5(nn.Module):
  """LeNet-5. `__call__(x [N, 32, 32, in_channels]) -> (logits [N, num_classes], out)`.

  `out` names every stage: conv1, tanh1, pool1 (C1, S2), conv2, tanh2, pool2
  (C3, S4), conv3, tanh3 (C5), fc1, tanh4 (F6), pre_logits and logits.
  """

  num_classes: int = 10
  in_channels: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # LeNet-5 has neither dropout nor batch norm.
    check_images(x, model="LeNet5", channels=self.in_channels, size=(32, 32))
    out = {}
    x = x.astype(self.dtype)
    for i, features in enumerate((6, 16), start=1):
      x = out[f"conv{i}"] = nn.Conv(
        features, (5, 5), padding="VALID", dtype=self.dtype, name=f"conv{i}"
      )(x)
      x = out[f"tanh{i}"] = jnp.tanh(x)
      x = out[f"pool{i}"] = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = out["conv3"] = nn.Conv(120, (5, 5), padding="VALID", dtype=self.dtype, name="conv3")(x)
    x = out["tanh3"] = jnp.tanh(x)
    x = x.reshape(x.shape[0], -1)
    x = out["fc1"] = nn.Dense(84, dtype=self.dtype, name="fc1")(x)
    x = out["tanh4"] = out["pre_logits"] = jnp.tanh(x)
    logits = out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)
    return logits, out
