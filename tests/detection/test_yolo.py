"""YOLO v1: eq. 3 against a loop-by-loop transcription, responsibility, decoding, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.detection import yolo
from research.models import darknet


def _iou(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (
    max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    - inter
  )
  return inter / union if union > 0 else 0.0


def _eq3(predictions, boxes, labels, valid, b, c, lambda_coord=5.0, lambda_noobj=0.5):
  """Eq. 3 of the paper written out cell by cell and predictor by predictor, with the
  documented rule for several centres in one cell (largest object first, each takes the
  free predictor of highest IoU, ties to the lower index)."""
  n, s = predictions.shape[:2]
  terms = dict.fromkeys(("loss_xy", "loss_wh", "loss_obj", "loss_noobj", "loss_class"), 0.0)
  for k in range(n):
    p = predictions[k].astype(np.float64)

    def pred_box(i_row, i_col, j, p=p):
      x, y, sw, sh = p[i_row, i_col, 5 * j : 5 * j + 4]
      cx, cy, w, h = (i_col + x) / s, (i_row + y) / s, sw * sw, sh * sh
      return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    objects = [g for g in range(len(valid[k])) if valid[k][g]]
    area = lambda g, k=k: (boxes[k][g][2] - boxes[k][g][0]) * (boxes[k][g][3] - boxes[k][g][1])  # noqa: E731
    objects.sort(key=lambda g: (-area(g), g))
    responsible = {}  # (row, col, j) -> object
    cell_classes = {}  # (row, col) -> set of classes
    for g in objects:
      x1, y1, x2, y2 = boxes[k][g]
      col = min(int(np.floor((x1 + x2) / 2 * s)), s - 1)
      row = min(int(np.floor((y1 + y2) / 2 * s)), s - 1)
      best, best_iou = None, -1.0
      for j in range(b):
        if (row, col, j) in responsible:
          continue
        value = _iou(pred_box(row, col, j), boxes[k][g])
        if value > best_iou:
          best, best_iou = j, value
      if best is None:
        continue  # more than B centres in this cell
      responsible[(row, col, best)] = (g, best_iou)
      cell_classes.setdefault((row, col), set()).add(int(labels[k][g]))
    for i_row in range(s):
      for i_col in range(s):
        for j in range(b):
          x, y, sw, sh, conf = p[i_row, i_col, 5 * j : 5 * j + 5]
          if (i_row, i_col, j) in responsible:
            g, target_iou = responsible[(i_row, i_col, j)]
            x1, y1, x2, y2 = boxes[k][g]
            tx = (x1 + x2) / 2 * s - i_col
            ty = (y1 + y2) / 2 * s - i_row
            terms["loss_xy"] += lambda_coord * ((x - tx) ** 2 + (y - ty) ** 2)
            terms["loss_wh"] += lambda_coord * (
              (sw - np.sqrt(x2 - x1)) ** 2 + (sh - np.sqrt(y2 - y1)) ** 2
            )
            terms["loss_obj"] += (conf - target_iou) ** 2
          else:
            terms["loss_noobj"] += lambda_noobj * conf**2
        if (i_row, i_col) in cell_classes:
          for cls in range(c):
            target = 1.0 if cls in cell_classes[(i_row, i_col)] else 0.0
            terms["loss_class"] += (p[i_row, i_col, 5 * b + cls] - target) ** 2
  return {key: value / n for key, value in terms.items()}


def _random_case(seed, s=7, b=2, c=20, g=6, n=3):
  rng = np.random.default_rng(seed)
  predictions = rng.normal(0.5, 0.3, (n, s, s, b * 5 + c)).astype(np.float32)
  xy = rng.uniform(0, 0.8, (n, g, 2))
  wh = rng.uniform(0.05, 0.4, (n, g, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, 1.0)], -1).astype(np.float32)
  labels = rng.integers(0, c, (n, g))
  valid = rng.random((n, g)) < 0.8
  # Image 0: two objects whose centres share a cell (different classes) and a third in it,
  # one more than B; image 1: a centre on the right and bottom edges; image 2: no objects.
  boxes[0, :3] = [[0.30, 0.30, 0.42, 0.44], [0.28, 0.31, 0.46, 0.40], [0.33, 0.35, 0.38, 0.38]]
  labels[0, :3], valid[0, :3] = [3, 5, 3], True
  boxes[1, 0], valid[1, 0] = [0.8, 0.9, 1.0, 1.0], True
  boxes[1, 1], valid[1, 1] = [0.9, 0.8, 1.1, 1.2], True  # centre exactly (1.0, 1.0)
  valid[2] = False
  return predictions, boxes, labels, valid


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_equals_eq3_written_out_loop_by_loop(seed):
  predictions, boxes, labels, valid = _random_case(seed)
  got = jax.jit(yolo.yolo_loss, static_argnames=("boxes_per_cell", "num_classes"))(
    predictions, boxes, labels, valid, boxes_per_cell=2, num_classes=20
  )
  want = _eq3(predictions, boxes, labels, valid, b=2, c=20)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(float(got[key]), want[key], rtol=1e-5, err_msg=key)
  assert want["loss_obj"] > 0 and want["loss_class"] > 0  # the terms are exercised


def test_responsibility_two_centres_in_one_cell_and_the_border():
  """Two centres in one cell take both predictors (largest first, highest IoU) and both
  class slots; a third is not served; a centre on the image's edge is in the last cell."""
  s, b = 4, 2
  corners = np.zeros((s, s, b, 4), np.float32)
  corners[1, 1, 0] = [0.30, 0.30, 0.40, 0.40]  # predictor 0 matches the small object
  corners[1, 1, 1] = [0.25, 0.25, 0.50, 0.50]  # predictor 1 the big one
  boxes = np.array(
    [
      [0.31, 0.31, 0.41, 0.41],  # small, centre cell (1, 1)
      [0.25, 0.25, 0.49, 0.49],  # big, centre cell (1, 1)
      [0.35, 0.35, 0.37, 0.37],  # tiny, centre cell (1, 1): no predictor left
      [0.9, 0.9, 1.1, 1.1],  # centre exactly on the edge
    ],
    np.float32,
  )
  row, col, j, iou, ok = jax.jit(yolo.assign, static_argnames="grid")(
    corners, boxes, np.ones(4, bool), grid=s
  )
  np.testing.assert_array_equal(row, [1, 1, 1, 3])
  np.testing.assert_array_equal(col, [1, 1, 1, 3])
  np.testing.assert_array_equal(np.asarray(ok), [True, True, False, True])
  np.testing.assert_array_equal(np.asarray(j)[:2], [0, 1])
  assert float(iou[1]) == pytest.approx(_iou(corners[1, 1, 1], boxes[1]), rel=1e-6)


def test_an_empty_image_trains_and_gradients_are_finite():
  model = yolo.YOLOv1_Scenes(num_classes=10, hidden=32)
  images = jnp.zeros((2, 128, 128, 3))
  variables = model.init({"params": jax.random.key(0)}, images)
  boxes = jnp.zeros((2, 3, 4))
  labels = jnp.zeros((2, 3), jnp.int32)
  valid = jnp.zeros((2, 3), bool).at[1, 0].set(True)
  boxes = boxes.at[1, 0].set(jnp.array([10.0, 20.0, 40.0, 60.0]))

  def loss(params):
    losses, _ = model.apply(
      {"params": params},
      images,
      boxes=boxes,
      labels=labels,
      valid=valid,
      train=True,
      rngs={"dropout": jax.random.key(1)},
    )
    return sum(losses.values()), losses

  (total, losses), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  assert np.isfinite(float(total))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert float(losses["loss_class"]) > 0 or float(losses["loss_xy"]) > 0  # image 1's object


def test_decode_class_specific_confidence_threshold_and_nms():
  s, b, c = 2, 2, 3
  p = np.zeros((1, s, s, b * 5 + c), np.float32)
  # Cell (0, 0): predictor 0 a box centred in the cell, 0.5 x 0.5 of the image; predictor 1
  # nearly the same box with lower confidence (suppressed by NMS within the class).
  p[0, 0, 0, 0:5] = [0.5, 0.5, np.sqrt(0.5), np.sqrt(0.5), 0.9]
  p[0, 0, 0, 5:10] = [0.55, 0.5, np.sqrt(0.5), np.sqrt(0.5), 0.6]
  p[0, 0, 0, 10:13] = [0.1, 0.8, 0.1]
  det = yolo.decode(
    p,
    np.array([[100.0, 100.0]]),
    (100, 100),
    boxes_per_cell=b,
    score_thresh=0.2,
    nms_thresh=0.5,
    top=5,
  )
  v = np.asarray(det["valid"][0])
  assert v.sum() == 1  # 0.9 * 0.8 kept, 0.6 * 0.8 suppressed, the rest under 0.2
  np.testing.assert_allclose(det["boxes"][0, 0], [0, 0, 50, 50], atol=1e-4)
  assert float(det["scores"][0, 0]) == pytest.approx(0.72)
  assert int(det["labels"][0, 0]) == 1


def test_bad_input_names_the_expected_shapes():
  with pytest.raises(ValueError, match=r"\[N, 7, 7, 30\]"):
    yolo.yolo_loss(
      np.zeros((1, 7, 7, 29)), np.zeros((1, 1, 4)), np.zeros((1, 1), int), np.ones((1, 1), bool)
    )
  model = yolo.YOLOv1_Scenes(num_classes=10)
  with pytest.raises(ValueError, match=r"\[N, 128, 128, 3\]"):
    model.init({"params": jax.random.key(0)}, jnp.zeros((1, 96, 96, 3)))


def test_darknet_parameter_counts_follow_the_layer_table():
  """Darknet20's and the detector's counts from the paper's layer table by hand."""

  def convs(cfg, cin):
    total = 0
    for v in cfg:
      if v != "M":
        total += v[1] * v[1] * cin * v[0] + v[0]
        cin = v[0]
    return total, cin

  body, cin = convs(darknet.YOLO_BODY, 3)
  head, cin = convs(darknet.YOLO_HEAD, cin)
  fc = (7 * 7 * cin * 4096 + 4096) + (4096 * 7 * 7 * 30 + 7 * 7 * 30)
  classifier = darknet.Darknet20(num_classes=1000)
  shapes = jax.eval_shape(classifier.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == body + 1024 * 1000 + 1000
  detector = yolo.YOLOv1(num_classes=20)
  shapes = jax.eval_shape(detector.init, jax.random.key(0), jnp.zeros((1, 448, 448, 3)))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == body + head + fc == 271_703_550
  features = darknet.Darknet20(num_classes=0)
  (_, out), _ = jax.eval_shape(
    features.init_with_output, jax.random.key(0), jnp.zeros((1, 448, 448, 3))
  )
  assert out["conv20"].shape == (1, 14, 14, 1024)  # the paper's 14 x 14 x 1024 at 448


def test_raw_outputs_and_postprocess_give_the_same_detections():
  """The split the lineage benchmark times (network, then decoding and NMS) changes nothing;
  per_cell applies the two layers to each cell with the same output shape."""
  model = yolo.YOLOv1_Scenes(num_classes=10, hidden=16, score_thresh=-1.0)
  images = jax.random.normal(jax.random.key(0), (2, 128, 128, 3))
  variables = model.init({"params": jax.random.key(1)}, images)
  size = jnp.array([[128.0, 128.0], [100.0, 90.0]])
  whole, _ = jax.jit(lambda v, x: model.apply(v, x, image_size=size))(variables, images)
  raw, _ = model.clone(raw_outputs=True).apply(variables, images, image_size=size)
  split = model.postprocess_raw(raw)
  for key in whole:
    np.testing.assert_allclose(np.asarray(split[key]), np.asarray(whole[key]), atol=1e-5)
  assert bool(whole["valid"].any()) and float(whole["boxes"][1][..., 2].max()) <= 90.0
  per_cell = yolo.YOLOv1_Scenes(num_classes=10, hidden=16, per_cell=True)
  shapes = jax.eval_shape(per_cell.init, jax.random.key(0), images)
  assert shapes["params"]["fc2"]["kernel"].shape == (16, 20)
  (_, out), _ = jax.eval_shape(per_cell.init_with_output, jax.random.key(0), images)
  assert out["predictions"].shape == (2, 8, 8, 20)
