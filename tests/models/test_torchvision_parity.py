"""Every classifier torchvision has: converted Flax logits equal torchvision's in eval mode.

The family test files check one or two variants at 224x224 and an uneven size;
this file covers the remaining variants at a small input, which exercises the
same layers at a fraction of the cost.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.convert import torchvision as tv
from tests.conftest import randomize_batch_norms

# Flax variant -> (torchvision constructor, input height, width).
VARIANTS = {
  "vgg.VGG13": ("vgg13", 32, 48),
  "vgg.VGG16": ("vgg16", 32, 32),
  "vgg.VGG19": ("vgg19", 32, 32),
  "vgg.VGG13_BN": ("vgg13_bn", 32, 32),
  "vgg.VGG16_BN": ("vgg16_bn", 33, 32),
  "vgg.VGG19_BN": ("vgg19_bn", 32, 32),
  "resnet.ResNet34": ("resnet34", 64, 48),
  "resnet.ResNet101": ("resnet101", 64, 64),
  "resnet.ResNet152": ("resnet152", 48, 64),
  "resnet.WideResNet101_2": ("wide_resnet101_2", 32, 32),
  "densenet.DenseNet161": ("densenet161", 64, 64),
  "densenet.DenseNet169": ("densenet169", 64, 33),
  "densenet.DenseNet201": ("densenet201", 33, 64),
}


def _randomize_batch_norms(torch, net):
  return randomize_batch_norms(torch, net, var=(0.5, 1.5))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_equal_torchvision(variant):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  tv_name, h, w = VARIANTS[variant]
  torch.manual_seed(0)
  net = getattr(torchvision.models, tv_name)(weights=None).eval()
  _randomize_batch_norms(torch, net)
  model = models.resolve(variant)()
  variables = tv.convert(net.state_dict(), model, input_shape=(1, h, w, 3))
  x = np.random.default_rng(0).normal(size=(1, h, w, 3)).astype(np.float32)
  # Under jit, as users run it: one compilation is faster than eager dispatch of these
  # hundreds of layers (DenseNet-169: 15 s against 43 s).
  ours, _ = jax.jit(functools.partial(model.apply, train=False))(variables, jnp.asarray(x))
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  scale = np.abs(theirs).max()
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * scale)
