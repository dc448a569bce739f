"""Fast R-CNN: training on given proposals (one compilation with or without objects), detections,
bad inputs, the paper's smooth L1, and truncated SVD of fc layers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.detection import fast_rcnn, faster_rcnn, roi_heads
from research.models import resnet


def _tiny(pooler: str):
  """A ResNet-18-width-8 FPN Fast R-CNN of 3 classes: RoI max pooling from the pyramid
  ("multiscale_roi_pool") or from P4 alone at stride 16 ("roi_pool", the paper's one map)."""
  backbone = lambda **kw: faster_rcnn.ResNetFPN(  # noqa: E731
    resnet=lambda **r: resnet.ResNet18(num_filters=8, **r), out_channels=16, **kw
  )
  single = {"featmap_names": ("2",), "spatial_scale": 1 / 16} if pooler == "roi_pool" else {}
  heads = functools.partial(
    roi_heads.RoIHeads,
    box_head=functools.partial(roi_heads.TwoMLPHead, 32),
    pooler=pooler,
    batch_size_per_image=16,
    background_low=0.1,
    smooth_l1_beta=1.0,
    nms_thresh=0.3,
    detections_per_img=10,
    **single,
  )
  return fast_rcnn.FastRCNN(num_classes=3, backbone=backbone, roi_heads=heads)


def _proposals():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 40, (2, 30, 2))
  wh = rng.uniform(6, 30, (2, 30, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, 64)], -1).astype(np.float32)
  valid = np.ones((2, 30), bool)
  valid[1, 20:] = False  # the second image has fewer proposals
  return jnp.asarray(boxes), jnp.asarray(valid)


@pytest.mark.parametrize("pooler", ["multiscale_roi_pool", "roi_pool"])
def test_training_step_with_and_without_objects_compiles_once(pooler):
  model = _tiny(pooler)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  proposals, proposal_valid = _proposals()
  variables = model.init(jax.random.PRNGKey(0), x, proposals, proposal_valid)
  traces = []

  @jax.jit
  def grads(params, boxes, labels, valid, key):
    traces.append(1)

    def loss(p):
      losses, _ = model.apply(
        {**variables, "params": p},
        x,
        proposals,
        proposal_valid,
        None,
        boxes,
        labels,
        valid,
        jnp.arange(2),
        train=True,
        rngs={"sample": key},
      )
      return faster_rcnn.detection_loss((losses, None), None)["loss"], losses

    return jax.grad(loss, has_aux=True)(params)

  boxes = jnp.asarray([[[4, 4, 30, 40], [20, 10, 60, 50], [0, 0, 0, 0]]] * 2, jnp.float32)
  labels = jnp.asarray([[0, 2, -1]] * 2)
  for valid in ([[True, True, False], [True, False, False]], [[False] * 3] * 2):
    g, losses = grads(variables["params"], boxes, labels, jnp.asarray(valid), jax.random.key(1))
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(np.isfinite(float(v)) for v in losses.values()), losses
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(g))
    # The ground truth joins the proposals, so an image with objects always has foreground.
    assert (float(losses["loss_box_reg"]) > 0) == np.asarray(valid).any()
    # The loss reaches the convolutions through the pooled RoIs.
    assert sum(float(np.abs(np.asarray(v)).sum()) for v in jax.tree.leaves(g["backbone"])) > 0
  assert len(traces) == 1
  detections, out = model.apply(variables, x, proposals, proposal_valid)
  assert detections["boxes"].shape == (2, 10, 4) and detections["labels"].max() < 3
  assert detections["labels"].min() >= -1
  np.testing.assert_array_equal(out["proposals"]["boxes"], proposals)


def test_detections_come_from_the_given_proposals_only():
  model = _tiny("multiscale_roi_pool")
  x = jnp.zeros((2, 64, 64, 3))
  proposals, proposal_valid = _proposals()
  variables = model.init(jax.random.PRNGKey(0), x, proposals, proposal_valid)
  none = jnp.zeros_like(proposal_valid)
  detections, _ = model.apply(variables, x, proposals, none)
  assert not np.asarray(detections["valid"]).any()


def test_bad_inputs_name_what_was_expected():
  model = _tiny("multiscale_roi_pool")
  x = jnp.zeros((2, 64, 64, 3))
  proposals, proposal_valid = _proposals()
  variables = model.init(jax.random.PRNGKey(0), x, proposals, proposal_valid)
  with pytest.raises(ValueError, match=r"needs proposals \[N, P, 4\] and proposal_valid"):
    model.apply(variables, x)
  with pytest.raises(ValueError, match=r"proposals must be \[N, P, 4\] = \[2, P, 4\].*\(30, 4\)"):
    model.apply(variables, x, proposals[0], proposal_valid)
  with pytest.raises(ValueError, match=r"proposal_valid must be \[N, P\] = \[2, 30\]"):
    model.apply(variables, x, proposals, proposal_valid[:, :5])
  with pytest.raises(ValueError, match="training needs boxes"):
    model.apply(
      variables, x, proposals, proposal_valid, train=True, rngs={"sample": jax.random.key(0)}
    )


@pytest.mark.parametrize("beta", [1.0, 1.0 / 9])
def test_box_loss_is_torch_smooth_l1_with_beta(beta):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  regression = rng.normal(size=(6, 12)).astype(np.float32) * 2
  labels = np.array([1, 2, 0, 1, -1, 2])
  targets = rng.normal(size=(6, 4)).astype(np.float32)
  got = roi_heads.fast_rcnn_loss(
    jnp.asarray(logits),
    jnp.asarray(regression),
    jnp.asarray(labels),
    jnp.asarray(targets),
    beta=beta,
  )
  fg = labels > 0
  chosen = regression.reshape(6, 3, 4)[np.arange(6), np.maximum(labels, 0)][fg]
  expected = (
    torch.nn.functional.smooth_l1_loss(
      torch.tensor(chosen), torch.tensor(targets[fg]), beta=beta, reduction="sum"
    )
    / (labels >= 0).sum()
  )
  np.testing.assert_allclose(float(got["loss_box_reg"]), float(expected), rtol=1e-5)


def test_truncated_svd_is_the_best_rank_t_approximation():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(40, 24)).astype(np.float32)
  first, second = fast_rcnn.truncated_svd(kernel, 24)
  np.testing.assert_allclose(np.asarray(first @ second), kernel, atol=1e-4)
  first, second = fast_rcnn.truncated_svd(kernel, 5)
  assert first.shape == (40, 5) and second.shape == (5, 24)
  s = np.linalg.svd(kernel, compute_uv=False)
  # Eckart-Young: the Frobenius error of the best rank-5 approximation.
  error = np.linalg.norm(kernel - np.asarray(first @ second))
  np.testing.assert_allclose(error, np.sqrt((s[5:] ** 2).sum()), rtol=1e-4)
  with pytest.raises(ValueError, match=r"rank must be in \[1, 24\].*received 0"):
    fast_rcnn.truncated_svd(kernel, 0)


def _detected(seed: int):
  """(model, images, proposals, proposal_valid, variables, detections) of the tiny detector."""
  model = _tiny("multiscale_roi_pool")
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(2, 64, 64, 3)), jnp.float32)
  proposals, proposal_valid = _proposals()
  variables = model.init(jax.random.PRNGKey(0), x, proposals, proposal_valid)
  reference, _ = model.apply(variables, x, proposals, proposal_valid)
  return model, x, proposals, proposal_valid, variables, reference


def test_factored_head_at_full_rank_detects_the_same_and_at_low_rank_nearly():
  model, x, proposals, proposal_valid, variables, reference = _detected(3)

  def factored(ranks):
    heads = functools.partial(
      model.roi_heads, box_head=lambda **b: roi_heads.TwoMLPHead(32, svd_ranks=ranks, **b)
    )
    layers = {f"roi_heads/box_head/{n}": r for n, r in zip(("fc6", "fc7"), ranks) if r}
    params = fast_rcnn.factor_layers(variables["params"], layers)
    return model.clone(roi_heads=heads).apply(
      {**variables, "params": params}, x, proposals, proposal_valid
    )[0]

  full = factored((32, 32))
  np.testing.assert_allclose(full["scores"], reference["scores"], atol=1e-4)
  svd_model, svd_params = fast_rcnn.with_svd(model, variables["params"], (32, 32))
  same, _ = svd_model.apply({**variables, "params": svd_params}, x, proposals, proposal_valid)
  np.testing.assert_allclose(same["scores"], reference["scores"], atol=1e-4)
  assert svd_params["roi_heads"]["box_head"]["fc7_svd"]["kernel"].shape == (32, 32)
  np.testing.assert_allclose(full["boxes"], reference["boxes"], atol=1e-3)
  assert "fc6_svd" not in variables["params"]["roi_heads"]["box_head"]  # the caller's tree kept
  low = factored((8, None))
  assert low["boxes"].shape == reference["boxes"].shape
  with pytest.raises(ValueError, match="no dense layer 'roi_heads/box_head/fc9'"):
    fast_rcnn.factor_layers(variables["params"], {"roi_heads/box_head/fc9": 4})
  plain = model.clone(roi_heads=functools.partial(model.roi_heads, box_head=lambda **b: None))
  with pytest.raises(ValueError, match="with_svd: the model's roi_heads need a box_head"):
    fast_rcnn.with_svd(plain, variables["params"], (8, 8))


def test_raw_outputs_then_postprocess_raw_give_the_same_detections():
  """The lineage benchmark times the network (raw_outputs) and postprocess_raw apart."""
  model, x, proposals, proposal_valid, variables, reference = _detected(4)
  raw_model = model.clone(roi_heads=functools.partial(model.roi_heads, raw_outputs=True))
  raw, _ = raw_model.apply(variables, x, proposals, proposal_valid)
  assert raw["class_logits"].shape == (2, proposals.shape[1], 4)  # 3 classes + background
  split = model.roi_heads(num_classes=4).postprocess_raw(raw)
  for key in ("boxes", "scores", "valid"):
    np.testing.assert_array_equal(split[key], reference[key])
  np.testing.assert_array_equal(split["labels"] - 1, reference["labels"])
