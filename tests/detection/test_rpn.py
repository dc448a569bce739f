"""The RPN against torchvision: head through `convert`, the whole eval forward, proposals
(filter_proposals), the loss (compute_loss on the same sampled anchors), images without
objects, one compilation for any number of objects, bad input."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.convert import torchvision as tv
from research.detection import anchors as anchors_lib
from research.detection import rpn

# A padded 64x80 batch of two images of different sizes, three levels (strides 4, 8, 16),
# one anchor size per level as torchvision's FPN, three ratios: T = 960 + 240 + 60 anchors.
IMAGE_HW = (64, 80)
IMAGE_SIZES = [(60, 80), (64, 50)]
LEVELS = [(16, 20), (8, 10), (4, 5)]
SIZES = ((16,), (32,), (64,))
RATIOS = (0.5, 1.0, 2.0)
C, A, N = 8, 3, 2
PRE, POST = 100, 50
COUNTS = tuple(h * w * A for h, w in LEVELS)


def _features(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(N, h, w, C)).astype(np.float32) for h, w in LEVELS]


def _anchors():
  return anchors_lib.multilevel_anchors(IMAGE_HW, LEVELS, SIZES, RATIOS)


def _nchw(torch, x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _torch_rpn(torch, *, pre=PRE, post=POST, nms_thresh=0.7, score_thresh=0.0, conv_depth=1):
  """torchvision's RegionProposalNetwork in eval mode, head weights large enough to matter."""
  from torchvision.models.detection import rpn as tv_rpn

  torch.manual_seed(0)
  head = tv_rpn.RPNHead(C, A, conv_depth=conv_depth)
  with torch.no_grad():  # torchvision's init (std 0.01, zero bias) gives near-equal scores
    for name, p in head.named_parameters():
      p.normal_(0, 0.3 if name.endswith("weight") else 0.5)
  return tv_rpn.RegionProposalNetwork(
    tv_rpn.AnchorGenerator(SIZES, (RATIOS,) * len(SIZES)),
    head,
    0.7,
    0.3,
    256,
    0.5,
    {"training": pre, "testing": pre},
    {"training": post, "testing": post},
    nms_thresh,
    score_thresh=score_thresh,
  ).eval()


def _head_variables(theirs, features):
  head_weights = {k[len("head.") :]: v for k, v in theirs.state_dict().items()}
  return tv.convert(head_weights, rpn.RPNHead(A, len(theirs.head.conv)), inputs=features)


@pytest.mark.parametrize("conv_depth", [1, 2])
def test_head_equals_torchvision_through_convert(conv_depth):
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  theirs = _torch_rpn(torch, conv_depth=conv_depth)
  features = _features()
  variables = _head_variables(theirs, features)
  objectness, deltas = jax.jit(rpn.RPNHead(A, conv_depth).apply)(variables, features)
  with torch.no_grad():
    expected = theirs.head([_nchw(torch, f) for f in features])
  for ours, their in zip(objectness + deltas, expected[0] + expected[1], strict=True):
    their = their.numpy().transpose(0, 2, 3, 1)
    assert ours.shape == their.shape
    np.testing.assert_allclose(ours, their, rtol=1e-5, atol=1e-5 * np.abs(their).max())
  # Flattened in torchvision's order.
  from torchvision.models.detection.rpn import concat_box_prediction_layers

  obj, dl = rpn.flatten_predictions(objectness, deltas)
  their_obj, their_dl = concat_box_prediction_layers(*expected)
  assert obj.shape == (N, sum(COUNTS)) and dl.shape == (N, sum(COUNTS), 4)
  np.testing.assert_allclose(obj.reshape(-1), their_obj.numpy().reshape(-1), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dl.reshape(-1, 4), their_dl.numpy(), rtol=1e-5, atol=1e-4)
  assert rpn.anchors_per_level(objectness) == COUNTS


def test_head_keys_and_init_are_torchvision():
  tv_rpn = pytest.importorskip("torchvision.models.detection.rpn")
  params = rpn.RPNHead(A).init(jax.random.PRNGKey(0), _features())["params"]
  keys = {
    tv.torchvision_key("params", tuple(k.key for k in path))
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  assert keys == set(tv_rpn.RPNHead(C, A).state_dict())
  kernels = np.concatenate([np.ravel(params[m]["kernel"]) for m in params])
  assert abs(kernels.std() - 0.01) < 0.002
  assert all(not np.any(params[m]["bias"]) for m in params)


def test_rpn_forward_equals_torchvision():
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  from torchvision.models.detection.image_list import ImageList

  theirs = _torch_rpn(torch)
  features = _features(1)
  variables = {"params": {"head": _head_variables(theirs, features)["params"]}}
  model = rpn.RPN(
    anchor_sizes=SIZES, aspect_ratios=RATIOS, pre_nms_top_n_test=PRE, post_nms_top_n_test=POST
  )
  props, losses, out = model.apply(
    variables, features, jnp.asarray(IMAGE_SIZES), image_shape_hw=IMAGE_HW
  )
  assert losses == {}
  np.testing.assert_array_equal(out["anchors"], _anchors())
  images = ImageList(torch.zeros(N, 3, *IMAGE_HW), IMAGE_SIZES)
  torch_features = collections.OrderedDict(
    (str(i), _nchw(torch, f)) for i, f in enumerate(features)
  )
  with torch.no_grad():
    expected, _ = theirs(images, torch_features)
  for i, their in enumerate(expected):
    their = their.numpy()
    valid = np.asarray(props["valid"][i])
    assert valid.sum() == len(their) and valid[: len(their)].all()
    np.testing.assert_allclose(props["boxes"][i][: len(their)], their, rtol=0, atol=1e-4)


def _crafted(seed=0):
  """Random logits and deltas, plus anchors forced into the top-k whose boxes end up
  empty: half shrunk to width ~1e-4, half pushed out of the image (clipped to width 0)."""
  rng = np.random.default_rng(seed)
  t = sum(COUNTS)
  objectness = (2 * rng.normal(size=(N, t))).astype(np.float32)
  deltas = (0.5 * rng.normal(size=(N, t, 4))).astype(np.float32)
  forced = rng.choice(t, size=(N, 20), replace=False)
  for i in range(N):
    objectness[i, forced[i]] = 8 + rng.random(20)
    deltas[i, forced[i, :10], 2] = -12.0
    deltas[i, forced[i, 10:], 0] = 40.0
  return objectness, deltas


@pytest.mark.parametrize("score_thresh, post", [(0.0, 30), (0.6, 400)])
def test_proposals_equal_filter_proposals(score_thresh, post):
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  objectness, deltas = _crafted()
  anchors = _anchors()
  boxes, scores, valid = rpn.proposals(
    objectness,
    deltas,
    anchors,
    np.asarray(IMAGE_SIZES),
    COUNTS,
    pre_nms_top_n=PRE,
    post_nms_top_n=post,
    score_thresh=score_thresh,
  )
  assert boxes.shape == (N, post, 4) and scores.shape == valid.shape == (N, post)

  def theirs(**kw):
    net = _torch_rpn(torch, **{"post": post, "score_thresh": score_thresh, **kw})
    decoded = net.box_coder.decode(
      torch.from_numpy(deltas).reshape(-1, 4), [torch.from_numpy(anchors)] * N
    )
    return net.filter_proposals(
      decoded.view(N, -1, 4), torch.from_numpy(objectness), IMAGE_SIZES, list(COUNTS)
    )

  expected_boxes, expected_scores = theirs()
  for i in range(N):
    their, v = expected_boxes[i].numpy(), np.asarray(valid[i])
    assert v.sum() == len(their) and v[: len(their)].all()
    np.testing.assert_allclose(boxes[i][: len(their)], their, rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores[i][: len(their)], expected_scores[i].numpy(), atol=1e-6)
    assert not np.any(boxes[i][len(their) :]) and not np.any(scores[i][len(their) :])
    h, w = IMAGE_SIZES[i]
    # Clipped boxes are among the proposals.
    assert ((their[:, :2] == 0).any(1) | (their[:, 2] == w) | (their[:, 3] == h)).any()
  # The inputs exercise every step: torchvision drops boxes as small (or below the score),
  # NMS suppresses some, and post_nms_top_n cuts or leaves padding as intended.
  candidates = sum(min(PRE, c) for c in COUNTS)
  unsuppressed, _ = theirs(post=10**6, nms_thresh=1.0)
  survivors, _ = theirs(post=10**6)
  for i in range(N):
    assert len(survivors[i]) < len(unsuppressed[i]) < candidates
    assert (len(expected_boxes[i]) == post) == (len(survivors[i]) >= post)
  assert post == 30 or not valid.all()


def _targets():
  """gt [N, G=4, 4] padded: image 0 holds three boxes, image 1 none."""
  gt = np.zeros((N, 4, 4), np.float32)
  gt[0, :3] = [[4, 6, 30, 40], [36, 10, 70, 30], [20, 30, 52, 62]]
  valid = np.zeros((N, 4), bool)
  valid[0, :3] = True
  return gt, valid


class _Sampled:
  """torchvision's fg_bg_sampler interface, returning the anchors our targets sampled."""

  def __init__(self, torch, labels, sampled):
    self.pos = [torch.from_numpy(s & (y == 1)) for y, s in zip(labels, sampled)]
    self.neg = [torch.from_numpy(s & (y == 0)) for y, s in zip(labels, sampled)]

  def __call__(self, labels):
    return self.pos, self.neg


def test_loss_equals_torchvision_compute_loss():
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  objectness, deltas = _crafted(1)
  anchors = _anchors()
  gt, gt_valid = _targets()
  key = jax.random.PRNGKey(3)
  targets = rpn.anchor_targets(anchors, gt, gt_valid, key)
  labels, sampled = np.asarray(targets.labels), np.asarray(targets.sampled)
  losses = rpn.rpn_loss(objectness, deltas, anchors, gt, gt_valid, key)

  net = _torch_rpn(torch).train()
  torch_anchors = [torch.from_numpy(anchors)] * N
  gt_list = [{"boxes": torch.from_numpy(gt[i][gt_valid[i]])} for i in range(N)]
  their_labels, matched = net.assign_targets_to_anchors(torch_anchors, gt_list)
  regression = net.box_coder.encode(matched, torch_anchors)
  for i in range(N):
    np.testing.assert_array_equal(labels[i], their_labels[i].numpy())
    pos = labels[i] == 1
    np.testing.assert_allclose(targets.deltas[i][pos], regression[i].numpy()[pos], atol=1e-5)
    # torchvision's counts: min(#pos, 128) positives, the rest of 256 negatives.
    num_pos = min((labels[i] == 1).sum(), 128)
    assert (sampled[i] & pos).sum() == num_pos
    assert (sampled[i] & (labels[i] == 0)).sum() == min((labels[i] == 0).sum(), 256 - num_pos)
  assert labels[0].max() == 1 and labels[1].max() == 0
  net.fg_bg_sampler = _Sampled(torch, labels, sampled)
  loss_objectness, loss_box = net.compute_loss(
    torch.from_numpy(objectness).reshape(-1, 1),
    torch.from_numpy(deltas).reshape(-1, 4),
    their_labels,
    regression,
  )
  np.testing.assert_allclose(losses["loss_objectness"], loss_objectness.item(), rtol=1e-5)
  np.testing.assert_allclose(losses["loss_rpn_box_reg"], loss_box.item(), rtol=1e-5)
  assert loss_box.item() > 0


def test_images_without_objects_train():
  objectness, deltas = _crafted(2)
  anchors = _anchors()
  gt, gt_valid = np.zeros((N, 3, 4), np.float32), np.zeros((N, 3), bool)
  key = jax.random.PRNGKey(0)
  targets = rpn.anchor_targets(anchors, gt, gt_valid, key)
  assert (np.asarray(targets.labels) == 0).all()
  assert np.asarray(targets.sampled).sum(1).tolist() == [256, 256]

  def total(o, d):
    losses = rpn.rpn_loss(o, d, anchors, gt, gt_valid, key)
    return losses["loss_objectness"] + losses["loss_rpn_box_reg"], losses

  (value, losses), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
    jnp.asarray(objectness), jnp.asarray(deltas)
  )
  assert np.isfinite(value) and losses["loss_rpn_box_reg"] == 0
  assert all(np.isfinite(g).all() for g in grads) and not np.any(grads[1])
  assert np.any(grads[0])


def test_training_compiles_once_for_any_number_of_objects():
  model = rpn.RPN(
    anchor_sizes=SIZES,
    aspect_ratios=RATIOS,
    pre_nms_top_n_train=PRE,
    post_nms_top_n_train=POST,
  )
  features = _features(3)
  variables = model.init(jax.random.PRNGKey(0), features, image_shape_hw=IMAGE_HW)
  traces = []

  @jax.jit
  def step(variables, gt, gt_valid, sizes, key):
    traces.append(1)

    def total(params):
      props, losses, _ = model.apply(
        {"params": params},
        features,
        sizes,
        gt,
        gt_valid,
        image_shape_hw=IMAGE_HW,
        train=True,
        rngs={"sample": key},
      )
      return sum(losses.values()), (losses, props)

    return jax.grad(total, has_aux=True)(variables["params"])

  gt = np.tile(
    np.asarray([[4, 6, 30, 40], [36, 10, 70, 30], [20, 30, 52, 62]], np.float32), (N, 1, 1)
  )
  for count in (0, 2, 3):
    gt_valid = np.zeros((N, 3), bool)
    gt_valid[0, :count] = True
    gt_valid[1, : max(count - 1, 0)] = True
    grads, (losses, props) = step(
      variables, gt, gt_valid, np.asarray(IMAGE_SIZES), jax.random.PRNGKey(count)
    )
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert np.isfinite(losses["loss_objectness"])
    assert (losses["loss_rpn_box_reg"] == 0) == (count == 0)
    assert props["boxes"].shape == (N, POST, 4) and props["valid"].any()
  assert len(traces) == 1 and step._cache_size() == 1


def test_paper_rule_leaves_cross_boundary_anchors_out_of_the_loss():
  """allowed_border=0 (FasterRCNN_VGG16): anchors that cross an image's border are never
  sampled; the loss is rpn_loss with those anchors marked invalid, per image size, where
  torchvision's rule (the default) draws from every anchor."""
  features = _features(5)
  gt = np.tile(np.asarray([[4, 6, 30, 40], [36, 10, 70, 30]], np.float32), (N, 1, 1))
  gt_valid = np.ones((N, 2), bool)
  sizes = np.asarray(IMAGE_SIZES, np.float32)
  keys = jax.random.split(jax.random.PRNGKey(7), N)
  paper = rpn.RPN(
    anchor_sizes=SIZES,
    aspect_ratios=RATIOS,
    pre_nms_top_n_train=PRE,
    post_nms_top_n_train=POST,
    allowed_border=0.0,
  )
  # One compiled program each: op-by-op init and apply compile every layer on its own.
  variables = jax.jit(lambda k: paper.init(k, features, image_shape_hw=IMAGE_HW))(
    jax.random.PRNGKey(0)
  )
  _, ours, raw = jax.jit(
    lambda v: paper.apply(
      v, features, sizes, gt, gt_valid, image_shape_hw=IMAGE_HW, train=True, keys=keys
    )
  )(variables)
  anchors = np.asarray(raw["anchors"])
  inside = np.stack(
    [
      (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= w) & (anchors[:, 3] <= h)
      for h, w in IMAGE_SIZES
    ]
  )
  assert 0 < inside[0].sum() < inside.shape[1] and (inside[0] != inside[1]).any()

  @jax.jit
  def by_hand(valid):
    args = (anchors, gt, gt_valid, keys)
    losses = rpn.rpn_loss(raw["objectness"], raw["deltas"], *args, anchor_valid=valid)
    return losses, rpn.anchor_targets(*args, anchor_valid=valid)

  expected, targets = by_hand(inside)
  for name in expected:
    np.testing.assert_allclose(ours[name], expected[name], rtol=1e-6)
  assert not np.asarray(targets.sampled)[~inside].any()
  assert (np.asarray(targets.labels)[~inside] == -1).all()
  _, every = by_hand(np.ones_like(inside))
  assert np.asarray(every.sampled)[~inside].any()


def test_bad_input_names_the_argument():
  objectness, deltas = _crafted()
  kw = {"pre_nms_top_n": PRE, "post_nms_top_n": POST}
  sizes = np.asarray(IMAGE_SIZES)
  with pytest.raises(ValueError, match="deltas must be"):
    rpn.proposals(objectness, deltas[:, :-1], _anchors(), sizes, COUNTS, **kw)
  with pytest.raises(ValueError, match="image_sizes must be"):
    rpn.proposals(objectness, deltas, _anchors(), sizes[:1], COUNTS, **kw)
  with pytest.raises(ValueError, match="post_nms_top_n must be"):
    rpn.proposals(
      objectness, deltas, _anchors(), sizes, COUNTS, pre_nms_top_n=PRE, post_nms_top_n=0
    )
  gt, gt_valid = _targets()
  with pytest.raises(ValueError, match="gt_valid must be"):
    rpn.rpn_loss(objectness, deltas, _anchors(), gt, gt_valid[:, :2], jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="features must be"):
    rpn.RPNHead(A).init(jax.random.PRNGKey(0), [np.zeros((1, 4, 4, 8)), np.zeros((1, 2, 2, 4))])
  with pytest.raises(ValueError, match="same number of anchors"):
    rpn.RPN(anchor_sizes=((16,), (32, 64))).init(
      jax.random.PRNGKey(0), _features()[:2], image_shape_hw=IMAGE_HW
    )
