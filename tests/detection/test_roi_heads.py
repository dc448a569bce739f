"""RoI heads against torchvision: MultiScaleRoIAlign and roi_pool, TwoMLPHead and
FastRCNNPredictor on converted weights, fastrcnn_loss and its gradients,
postprocess_detections and the whole RoIHeads eval forward; training with and without
objects; one compilation for any number of valid proposals."""

from __future__ import annotations

import functools
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from research.convert import torchvision as convert_tv
from research.detection import assign, poolers
from research.detection import roi_heads as rh
from research.models import vgg

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import faster_rcnn as tv_frcnn  # noqa: E402
from torchvision.models.detection import roi_heads as tv_roi_heads  # noqa: E402


def _nchw(x):
  return torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))


def _random_boxes(rng, n, r, hw, smallest, largest):
  """[n, r, 4] boxes of log-uniform size in [smallest, largest], clipped to hw = (H, W)."""
  side = np.exp(rng.uniform(np.log(smallest), np.log(largest), (n, r)))
  aspect = np.exp(rng.uniform(-0.7, 0.7, (n, r)))
  w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
  cx, cy = rng.uniform(0, hw[1], (n, r)), rng.uniform(0, hw[0], (n, r))
  boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
  boxes[..., 0::2] = boxes[..., 0::2].clip(0, hw[1])
  boxes[..., 1::2] = boxes[..., 1::2].clip(0, hw[0])
  return boxes.astype(np.float32)


def _pyramid(rng, n, hw, channels):
  """FPN-like maps at strides 4 to 32 of an image hw."""
  return OrderedDict(
    (str(i), rng.normal(size=(n, hw[0] >> (i + 2), hw[1] >> (i + 2), channels)).astype(np.float32))
    for i in range(4)
  )


def test_multiscale_roi_align_matches_torchvision_with_gradient():
  rng = np.random.default_rng(0)
  hw, n, r = (160, 192), 2, 24
  feats = _pyramid(rng, n, hw, 3)
  boxes = _random_boxes(rng, n, r, hw, 3, 220)
  # canonical_scale 56 (224 in detectors) puts these small boxes on all four levels.
  levels = np.asarray(poolers.roi_levels(jnp.asarray(boxes), 2, 5, canonical_scale=56))
  assert set(levels.ravel().tolist()) == {0, 1, 2, 3}
  pool = torchvision.ops.MultiScaleRoIAlign(list(feats), 7, 2, canonical_scale=56)
  t_feats = OrderedDict((k, _nchw(v).requires_grad_()) for k, v in feats.items())
  ref = pool(t_feats, [torch.tensor(b) for b in boxes], [hw] * n)
  cotangent = rng.normal(size=ref.shape).astype(np.float32)
  (ref * torch.tensor(cotangent)).sum().backward()

  pooler = functools.partial(poolers.multiscale_roi_align, boxes=boxes, image_hw=hw)
  _assert_pooled_like_torch(pooler, feats, t_feats, ref, cotangent, atol=1e-4, grad_atol=1e-4)


def _assert_pooled_like_torch(pooler, feats, t_feats, ref, cotangent, *, atol, grad_atol):
  """pooler(features) [N, R, 7, 7, C] against torch's pooled `ref` [N * R, C, 7, 7], and its
  vjp of `cotangent` against the gradients that `ref`'s backward left in `t_feats`."""
  out, vjp = jax.vjp(
    lambda f: pooler(f, canonical_scale=56), {k: jnp.asarray(v) for k, v in feats.items()}
  )
  shape = out.shape
  want = ref.detach().numpy().transpose(0, 2, 3, 1).reshape(shape)
  np.testing.assert_allclose(out, want, atol=atol)
  (grads,) = vjp(jnp.asarray(cotangent.transpose(0, 2, 3, 1).reshape(shape)))
  for k, v in t_feats.items():
    np.testing.assert_allclose(grads[k], v.grad.numpy().transpose(0, 2, 3, 1), atol=grad_atol)


def test_single_scale_roi_pool_matches_torchvision():
  rng = np.random.default_rng(1)
  feature = rng.normal(size=(2, 10, 12, 5)).astype(np.float32)
  boxes = _random_boxes(rng, 2, 9, (160, 192), 8, 150)
  out = poolers.single_scale_roi_pool(feature, boxes, output_size=7, spatial_scale=1 / 16)
  ref = torchvision.ops.roi_pool(_nchw(feature), [torch.tensor(b) for b in boxes], 7, 1 / 16)
  want = ref.numpy().transpose(0, 2, 3, 1).reshape(2, 9, 7, 7, 5)
  np.testing.assert_allclose(out, want, atol=1e-6)


def test_multiscale_roi_pool_is_torchvision_roi_pool_on_each_rois_level_with_gradient():
  """One lookup per bin from the stacked levels = torchvision's roi_pool of each RoI on its own
  FPN level (the level FPN eq. 1 gives it), values and gradients."""
  rng = np.random.default_rng(2)
  hw, n, r = (160, 192), 2, 24
  feats = _pyramid(rng, n, hw, 3)
  boxes = _random_boxes(rng, n, r, hw, 3, 150)
  levels = np.asarray(poolers.roi_levels(jnp.asarray(boxes), 2, 5, canonical_scale=56))
  assert set(levels.ravel().tolist()) == {0, 1, 2, 3}
  t_feats = OrderedDict((k, _nchw(v).requires_grad_()) for k, v in feats.items())
  rois = torch.tensor(
    np.concatenate([np.repeat(np.arange(n), r)[:, None], boxes.reshape(-1, 4)], 1),
    dtype=torch.float32,
  )
  ref = torch.zeros(n * r, 3, 7, 7)
  for i, fmap in enumerate(t_feats.values()):
    chosen = torch.tensor(levels.reshape(-1) == i)
    pooled = torchvision.ops.roi_pool(fmap, rois, 7, 1 / 2 ** (i + 2))
    ref = torch.where(chosen[:, None, None, None], pooled, ref)
  cotangent = rng.normal(size=ref.shape).astype(np.float32)
  (ref * torch.tensor(cotangent)).sum().backward()

  pooler = functools.partial(poolers.multiscale_roi_pool, boxes=boxes, image_hw=hw)
  _assert_pooled_like_torch(pooler, feats, t_feats, ref, cotangent, atol=1e-6, grad_atol=1e-5)


def _convert(state_dict, prefix, module, shape):
  sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
  return convert_tv.convert(sub, module, inputs=jax.ShapeDtypeStruct(shape, jnp.float32))


def test_heads_on_converted_weights_match_torchvision():
  torch.manual_seed(0)
  c, rep, k = 4, 32, 5
  t_head, t_pred = tv_frcnn.TwoMLPHead(c * 49, rep), tv_frcnn.FastRCNNPredictor(rep, k)
  head = _convert(t_head.state_dict(), "", rh.TwoMLPHead(rep), (3, 7, 7, c))
  pred = _convert(t_pred.state_dict(), "", rh.FastRCNNPredictor(k), (3, rep))
  x = np.random.default_rng(2).normal(size=(2, 3, 7, 7, c)).astype(np.float32)
  hidden = jax.jit(rh.TwoMLPHead(rep).apply)(head, x)
  scores, deltas = jax.jit(rh.FastRCNNPredictor(k).apply)(pred, hidden)
  with torch.no_grad():
    t_hidden = t_head(_nchw(x.reshape(6, 7, 7, c)))
    t_scores, t_deltas = t_pred(t_hidden)
  np.testing.assert_allclose(hidden.reshape(6, rep), t_hidden.numpy(), atol=1e-5)
  np.testing.assert_allclose(scores.reshape(6, k), t_scores.numpy(), atol=1e-5)
  np.testing.assert_allclose(deltas.reshape(6, 4 * k), t_deltas.numpy(), atol=1e-5)
  # torch's Linear init: weights and biases within 1/sqrt(fan_in).
  fresh = jax.jit(rh.FastRCNNPredictor(k).init)(jax.random.PRNGKey(0), jnp.zeros((1, 400)))
  for leaf in jax.tree.leaves(fresh["params"]):
    assert 0.04 < np.abs(leaf).max() <= 1 / 20


def test_vgg_box_head_is_vggs_classifier():
  model = vgg.VGG(cfg=(8, "M"), hidden=16, num_classes=3)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 14, 14, 3)), jnp.float32)
  # Compiled whole: eager, each initializer and layer would compile on its own.
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
  _, out = jax.jit(model.apply)({"params": params}, x)
  sub = {k: params[k] for k in ("classifier.0", "classifier.3")}
  got = jax.jit(rh.VGGBoxHead(hidden=16).apply)({"params": sub}, out["pool1"][None])[0]
  np.testing.assert_allclose(got, out["relu7"], atol=1e-6)


def _targets(rng, n, g, hw):
  """Padded ground truth; image 1 has no objects."""
  boxes = _random_boxes(rng, n, g, hw, 20, 90)
  labels = rng.integers(1, 4, (n, g)).astype(np.int32)
  valid = np.zeros((n, g), bool)
  valid[0, :3] = True
  return {"boxes": boxes, "labels": labels, "valid": valid}


def test_fast_rcnn_loss_matches_torchvision_and_gradients():
  rng = np.random.default_rng(4)
  n, p, k, s, hw = 2, 30, 4, 48, (120, 150)
  gt = _targets(rng, n, 4, hw)
  proposals = _random_boxes(rng, n, p, hw, 15, 100)
  # Proposals near image 0's objects, so that some are foreground.
  proposals[0, :10] = gt["boxes"][0, np.arange(10) % 3] + rng.normal(0, 3, (10, 4))
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  sample = functools.partial(assign.roi_targets, num_samples=s, positive_fraction=0.25)
  t = jax.jit(jax.vmap(sample))(proposals, gt["boxes"], gt["labels"], gt["valid"], keys)
  labels, valid = np.asarray(t.labels), np.asarray(t.valid)
  assert (labels > 0).sum() > 0 and 0 < valid.sum() < n * s  # foreground and padding
  logits = rng.normal(size=(n, s, k)).astype(np.float32)
  regression = rng.normal(size=(n, s, 4 * k)).astype(np.float32)

  def ours(logits, regression):
    losses = rh.fast_rcnn_loss(logits, regression, t.labels, t.deltas, t.valid)
    return losses["loss_classifier"] + 2 * losses["loss_box_reg"], losses

  step = jax.jit(jax.value_and_grad(ours, argnums=(0, 1), has_aux=True))
  (_, losses), grads = step(logits, regression)
  t_logits = torch.tensor(logits[valid], requires_grad=True)
  t_regression = torch.tensor(regression[valid], requires_grad=True)
  cls, box = tv_roi_heads.fastrcnn_loss(
    t_logits,
    t_regression,
    [torch.tensor(labels[i][valid[i]]).long() for i in range(n)],
    [torch.tensor(np.asarray(t.deltas)[i][valid[i]]) for i in range(n)],
  )
  (cls + 2 * box).backward()
  np.testing.assert_allclose(losses["loss_classifier"], cls.item(), rtol=1e-5)
  np.testing.assert_allclose(losses["loss_box_reg"], box.item(), rtol=1e-5)
  assert box.item() > 0
  np.testing.assert_allclose(grads[0][valid], t_logits.grad.numpy(), atol=1e-5)
  np.testing.assert_allclose(grads[1][valid], t_regression.grad.numpy(), atol=1e-5)
  assert not np.asarray(grads[0])[~valid].any()  # padding takes no part


def test_fast_rcnn_loss_without_objects_or_rois_is_finite():
  k, s = 3, 8
  logits, regression = jnp.zeros((2, s, k)), jnp.zeros((2, s, 4 * k))
  deltas = jnp.zeros((2, s, 4))

  @jax.jit
  @functools.partial(jax.value_and_grad, argnums=(0, 1))
  def total(logits, regression, labels):
    losses = rh.fast_rcnn_loss(logits, regression, labels, deltas)
    return losses["loss_classifier"] + losses["loss_box_reg"]

  for labels in (np.zeros((2, s), np.int32), np.full((2, s), -1, np.int32)):  # background; none
    value, grads = total(logits, regression, labels)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)
    np.testing.assert_allclose(value, np.log(k) if labels[0, 0] == 0 else 0.0, rtol=1e-6)


def _detection_inputs(rng, n, r, k, image_hw):
  """Proposals in clusters (NMS has work), some across the image border (clipping)."""
  proposals = np.zeros((n, r, 4), np.float32)
  for i, (h, w) in enumerate(image_hw):
    centres = rng.uniform([0, 0], [w, h], (5, 2))
    c = centres[rng.integers(0, 5, r)] + rng.normal(0, 4, (r, 2))
    size = rng.uniform(15, 40, (r, 2))
    proposals[i] = np.concatenate([c - size / 2, c + size / 2], -1)
  logits = rng.normal(0, 1.5, (n, r, k)).astype(np.float32)
  regression = rng.normal(0, 1.0, (n, r, 4 * k)).astype(np.float32)
  return proposals, logits, regression


def _torch_postprocess(logits, regression, proposals, valid, image_hw, **kw):
  heads = tv_roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, **kw)
  keep = [np.flatnonzero(v) for v in valid]
  return heads.postprocess_detections(
    torch.tensor(np.concatenate([x[i] for x, i in zip(logits, keep)])),
    torch.tensor(np.concatenate([x[i] for x, i in zip(regression, keep)])),
    [torch.tensor(x[i]) for x, i in zip(proposals, keep)],
    [tuple(int(v) for v in hw) for hw in image_hw],
  )


def _assert_same_detections(ours, ref):
  for i, (boxes, scores, labels) in enumerate(zip(*ref)):
    m = int(np.asarray(ours["valid"][i]).sum())
    assert m == len(boxes), (i, m, len(boxes))
    assert np.asarray(ours["valid"][i][:m]).all()
    np.testing.assert_array_equal(ours["labels"][i][:m], labels.numpy())
    np.testing.assert_allclose(ours["boxes"][i][:m], boxes.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours["scores"][i][:m], scores.numpy(), atol=1e-6)


def test_postprocess_matches_torchvision_and_compiles_once():
  rng = np.random.default_rng(5)
  n, r, k, top = 2, 40, 4, 25
  image_hw = np.array([[100, 120], [90, 70]], np.float32)
  proposals, logits, regression = _detection_inputs(rng, n, r, k, image_hw)
  kw = {"score_thresh": 0.1, "nms_thresh": 0.5, "detections_per_img": top}
  traces = []

  @jax.jit
  def run(valid):
    traces.append(1)
    return rh.postprocess(logits, regression, proposals, valid, image_hw, **kw)

  for counts in ((40, 31), (12, 0), (1, 40)):
    valid = np.arange(r)[None] < np.array(counts)[:, None]
    ref = _torch_postprocess(logits, regression, proposals, valid, image_hw, **kw)
    ours = run(valid)
    _assert_same_detections(ours, ref)
    if counts == (40, 31):
      boxes = ref[0][0].numpy()
      candidates = (torch.softmax(torch.tensor(logits[0]), -1)[:, 1:] > 0.1).sum().item()
      assert len(boxes) == top < candidates  # NMS suppressed and the top 25 were kept
      assert (boxes[:, :2] == 0).any() and (boxes[:, 2] == 120).any()  # clipped
  assert len(traces) == 1


def test_roi_heads_eval_matches_torchvision():
  rng = np.random.default_rng(6)
  torch.manual_seed(1)
  n, c, r, k, rep, top = 2, 4, 30, 4, 32, 20
  shape = (256, 320)
  feats = _pyramid(rng, n, shape, c)
  image_hw = np.array([[256, 300], [230, 320]], np.float32)
  proposals, _, _ = _detection_inputs(rng, n, r, k, image_hw)
  proposals[:, ::3] *= 4  # larger RoIs for the coarser levels
  proposals[..., 0::2] = proposals[..., 0::2].clip(0, image_hw[:, None, 1:])
  proposals[..., 1::2] = proposals[..., 1::2].clip(0, image_hw[:, None, :1])
  valid = np.arange(r)[None] < np.array([[r], [21]])
  t_heads = tv_roi_heads.RoIHeads(
    torchvision.ops.MultiScaleRoIAlign(list(feats), 7, 2),
    tv_frcnn.TwoMLPHead(c * 49, rep),
    tv_frcnn.FastRCNNPredictor(rep, k),
    0.5, 0.5, 512, 0.25, None, 0.01, 0.5, top,
  ).eval()  # fmt: skip
  with torch.no_grad():
    ref, _ = t_heads(
      OrderedDict((k_, _nchw(v)) for k_, v in feats.items()),
      [torch.tensor(p[v]) for p, v in zip(proposals, valid)],
      [tuple(int(v) for v in hw) for hw in image_hw],
    )
  model = rh.RoIHeads(
    num_classes=k,
    box_head=functools.partial(rh.TwoMLPHead, representation_size=rep),
    score_thresh=0.01,
    detections_per_img=top,
  )
  sd = t_heads.state_dict()
  args = (feats, proposals, valid, image_hw)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, image_shape=shape))
  names = {
    convert_tv.torchvision_key("params", path)
    for path in traverse_util.flatten_dict(abstract["params"])
  }
  assert names == set(sd)  # converted roi_heads.* weights fit by name
  params = {
    "box_head": _convert(sd, "box_head.", rh.TwoMLPHead(rep), (1, 7, 7, c))["params"],
    "box_predictor": _convert(sd, "box_predictor.", rh.FastRCNNPredictor(k), (1, rep))["params"],
  }
  apply = jax.jit(functools.partial(model.apply, image_shape=shape))
  ours, losses = apply({"params": params}, *args)
  assert losses == {}
  _assert_same_detections(ours, [[d[key] for d in ref] for key in ("boxes", "scores", "labels")])
  assert ours["valid"].sum() > 10


@pytest.mark.parametrize("pooler", ["multiscale_roi_align", "roi_pool"])
def test_roi_heads_train_with_and_without_objects(pooler):
  rng = np.random.default_rng(7)
  n, c, p, hw = 2, 4, 20, (96, 128)
  if pooler == "roi_pool":  # Fast R-CNN: VGG's fc6/fc7 on one map at 1/16
    feats = {"conv5_3": rng.normal(size=(n, 6, 8, c)).astype(np.float32)}
    kw = {"featmap_names": ("conv5_3",), "box_head": functools.partial(rh.VGGBoxHead, hidden=16)}
  else:
    feats, kw = _pyramid(rng, n, hw, c), {"box_head": functools.partial(rh.TwoMLPHead, 16)}
  model = rh.RoIHeads(num_classes=4, pooler=pooler, batch_size_per_image=16, **kw)
  gt = _targets(rng, n, 4, hw)
  proposals = _random_boxes(rng, n, p, hw, 10, 80)
  valid = np.arange(p)[None] < np.array([[p], [7]])
  args = (feats, proposals, valid, np.array([hw, hw], np.float32))
  rngs = {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}
  variables = jax.jit(functools.partial(model.init, image_shape=hw))(rngs, *args)
  traces = []

  @jax.jit
  @functools.partial(jax.value_and_grad, argnums=(0, 1), has_aux=True)
  def loss(params, feats, targets):
    traces.append(1)
    _, losses = model.apply(
      {"params": params},
      feats,
      *args[1:],
      image_shape=hw,
      targets=targets,
      train=True,
      rngs={"sample": jax.random.PRNGKey(2), "dropout": jax.random.PRNGKey(3)},
    )
    return sum(losses.values()), losses

  for targets in (gt, {**gt, "valid": np.zeros_like(gt["valid"])}):
    (value, losses), grads = loss(variables["params"], feats, targets)
    assert np.isfinite(value) and value > 0
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert (losses["loss_box_reg"] > 0) == bool(targets["valid"].any())
  assert len(traces) == 1  # with objects and without: one program
