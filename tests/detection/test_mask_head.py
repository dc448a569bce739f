"""Mask R-CNN's mask branch against torchvision: MaskRCNNHeads and MaskRCNNPredictor on
converted weights, project_masks_on_boxes, maskrcnn_loss and its gradient, and
paste_masks_in_image (boxes inside, across and outside the image, tiny ones)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.convert import torchvision as convert_tv
from research.detection import mask_head as mh

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import mask_rcnn as tv_mask  # noqa: E402
from torchvision.models.detection import roi_heads as tv_roi_heads  # noqa: E402


def _boxes(rng, r, hw, smallest, largest):
  """[r, 4] boxes of log-uniform size with centres inside hw = (H, W), not clipped."""
  side = np.exp(rng.uniform(np.log(smallest), np.log(largest), r))
  aspect = np.exp(rng.uniform(-0.7, 0.7, r))
  w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
  cx, cy = rng.uniform(0, hw[1], r), rng.uniform(0, hw[0], r)
  return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).astype(np.float32)


def test_heads_and_predictor_match_torchvision_on_converted_weights():
  torch.manual_seed(0)
  c, k = 16, 4
  tv = torch.nn.Sequential(
    tv_mask.MaskRCNNHeads(c, (12, 12, 12, 12), 1), tv_mask.MaskRCNNPredictor(12, 10, k)
  ).eval()
  # torch's biases of the heads are zeros; perturb them so the test sees their layout.
  with torch.no_grad():
    for name, p in tv.named_parameters():
      if name.endswith("bias"):
        p.normal_(0, 0.1)

  class Branch(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
      x = mh.MaskRCNNHeads((12, 12, 12, 12), name="0")(x)
      return mh.MaskRCNNPredictor(k, 10, name="1")(x)

  model = Branch()
  variables = convert_tv.convert(tv.state_dict(), model, input_shape=(2, 14, 14, c))
  x = np.random.default_rng(0).normal(size=(2, 3, 14, 14, c)).astype(np.float32)
  ours = np.asarray(model.apply(variables, x))
  with torch.no_grad():
    theirs = tv(torch.tensor(x.reshape(6, 14, 14, c).transpose(0, 3, 1, 2))).numpy()
  assert ours.shape == (2, 3, 28, 28, k)
  np.testing.assert_allclose(
    ours.reshape(6, 28, 28, k), theirs.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5
  )


def test_initialization_has_torchvision_scales():
  """Kaiming normal (fan_out) weights: the std of each kernel is sqrt(2 / fan_out) with
  torch's fan_out, the transposed conv's being in_channels * 4."""

  class Branch(nn.Module):
    @nn.compact
    def __call__(self, x):
      return mh.MaskRCNNPredictor(91, 256, name="p")(mh.MaskRCNNHeads(name="h")(x))

  params = Branch().init(jax.random.PRNGKey(0), jnp.zeros((1, 14, 14, 256)))["params"]
  stds = {
    "h/0.0": (np.asarray(params["h"]["0.0"]["kernel"]).std(), np.sqrt(2 / (256 * 9))),
    "conv5_mask": (np.asarray(params["p"]["conv5_mask"]["kernel"]).std(), np.sqrt(2 / (256 * 4))),
    "logits": (np.asarray(params["p"]["mask_fcn_logits"]["kernel"]).std(), np.sqrt(2 / 91)),
  }
  for name, (got, want) in stds.items():
    assert abs(got / want - 1) < 0.05, (name, got, want)
  assert not np.asarray(params["h"]["0.0"]["bias"]).any()
  bias = np.asarray(params["p"]["conv5_mask"]["bias"])
  assert 0 < np.abs(bias).max() <= 1 / np.sqrt(256 * 4)


def test_project_masks_and_loss_match_torchvision_with_gradient():
  rng = np.random.default_rng(1)
  g, hw, r, m, k = 3, (64, 80), 10, 28, 5
  gt_masks = (rng.uniform(size=(g, *hw)) > 0.6).astype(np.uint8)
  boxes = np.clip(_boxes(rng, r, hw, 4, 70), 0, [hw[1], hw[0], hw[1], hw[0]])
  matched = rng.integers(0, g, r)
  ours = np.asarray(mh.project_masks_on_boxes(gt_masks, boxes, matched, m))
  theirs = tv_roi_heads.project_masks_on_boxes(
    torch.tensor(gt_masks), torch.tensor(boxes), torch.tensor(matched), m
  ).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  # aligned=True: Detectron2's ROIAlignV2, torchvision's roi_align(aligned=True).
  rois = torch.tensor(np.concatenate([matched[:, None], boxes], 1).astype(np.float32))
  aligned = torchvision.ops.roi_align(
    torch.tensor(gt_masks[:, None]).float(), rois, (m, m), 1.0, -1, aligned=True
  )[:, 0].numpy()
  got = np.asarray(mh.project_masks_on_boxes(gt_masks, boxes, matched, m, aligned=True))
  np.testing.assert_allclose(got, aligned, atol=1e-5)

  logits = rng.normal(size=(r, m, m, k)).astype(np.float32)
  gt_labels = rng.integers(1, k, g)
  labels = gt_labels[matched]  # torchvision's loss takes each RoI's class from its match
  valid = np.arange(r) < 7  # the last three are padding
  loss, grad = jax.value_and_grad(mh.maskrcnn_loss)(
    jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(ours), jnp.asarray(valid)
  )
  t_logits = torch.tensor(logits[:7].transpose(0, 3, 1, 2), requires_grad=True)
  t_loss = tv_roi_heads.maskrcnn_loss(
    t_logits,
    [torch.tensor(boxes[:7])],
    [torch.tensor(gt_masks)],
    [torch.tensor(gt_labels)],
    [torch.tensor(matched[:7])],
  )
  t_loss.backward()
  np.testing.assert_allclose(float(loss), float(t_loss), rtol=1e-5)
  grad = np.asarray(grad)
  np.testing.assert_allclose(grad[:7], t_logits.grad.numpy().transpose(0, 2, 3, 1), atol=1e-8)
  assert not grad[7:].any()


def test_loss_without_positive_rois_is_zero_not_nan():
  logits = jnp.ones((2, 4, 28, 28, 3))
  loss, grad = jax.value_and_grad(mh.maskrcnn_loss)(
    logits, jnp.ones((2, 4), jnp.int32), jnp.zeros((2, 4, 28, 28)), jnp.zeros((2, 4), bool)
  )
  assert float(loss) == 0.0 and np.isfinite(np.asarray(grad)).all()


def test_paste_masks_matches_torchvision():
  rng = np.random.default_rng(2)
  hw = (57, 83)
  boxes = np.concatenate(
    [
      _boxes(rng, 12, hw, 2, 90),  # inside, across the border, larger than the image
      np.array([[10.2, 11.7, 10.9, 12.1], [40, 20, 40, 20], [-30, -20, -5, -2]], np.float32),
    ]
  )
  masks = rng.uniform(size=(len(boxes), 28, 28)).astype(np.float32)
  ours = mh.paste_masks_in_image(masks, boxes, hw)
  # torchvision's slicing fails on a box wholly outside the image: compare the others.
  theirs = tv_roi_heads.paste_masks_in_image(
    torch.tensor(masks[:-1, None]), torch.tensor(boxes[:-1]), hw
  )[:, 0].numpy()
  assert ours.shape == (len(boxes), *hw)
  np.testing.assert_allclose(ours[:-1], theirs, atol=1e-5)
  assert not ours[-1].any()  # a box wholly outside pastes nothing


def test_bad_shapes_are_errors():
  with pytest.raises(ValueError, match="masks must be"):
    mh.paste_masks_in_image(np.zeros((2, 28, 14)), np.zeros((2, 4)), (8, 8))
  with pytest.raises(ValueError, match="boxes must be"):
    mh.paste_masks_in_image(np.zeros((2, 28, 28)), np.zeros((3, 4)), (8, 8))
  with pytest.raises(ValueError, match="gt_masks must be"):
    mh.project_masks_on_boxes(np.zeros((8, 8)), np.zeros((1, 4)), np.zeros(1), 28)
  with pytest.raises(ValueError, match="maskrcnn_loss"):
    mh.maskrcnn_loss(
      jnp.zeros((2, 28, 28, 3)), jnp.zeros(3, int), jnp.zeros((2, 28, 28)), jnp.zeros(2, bool)
    )
