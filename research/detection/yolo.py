"""YOLO v1 (Redmon et al. 2016): detection as one regression, from pixels to boxes.

The network (research.models.darknet) maps the image to an S x S x (B * 5 + C) tensor:
the image is divided into an S x S grid, and each cell predicts B boxes and one set of C
class probabilities. Each cell's vector here is laid out as

    [x, y, sqrt w, sqrt h, confidence] for predictor 0, ..., for predictor B - 1, then p(c)

x, y: the box centre relative to the cell (0..1 across it), sqrt w, sqrt h: the square roots
of the width and height relative to the image (the input canvas), confidence: Pr(object) x
IoU(pred, truth), p(c): Pr(class c | object). The last layer is linear, so every number is
a raw regression output.

The loss is eq. 3 of the paper, a sum of squared errors over each image (the batch's mean
of those sums):

    lambda_coord sum_i sum_j 1obj_ij [(x - x^)^2 + (y - y^)^2]
  + lambda_coord sum_i sum_j 1obj_ij [(sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
  + sum_i sum_j 1obj_ij (C - C^)^2          C^ = IoU of predictor j's box with its object
  + lambda_noobj sum_i sum_j 1noobj_ij C^2  every predictor that is not responsible
  + sum_i 1obj_i sum_c (p(c) - p^(c))^2     cells that hold an object's centre

with lambda_coord = 5, lambda_noobj = 0.5. Responsibility (`assign`): an object belongs to
the cell that holds its centre (a centre on the image's right or bottom edge to the last
cell: no index past S - 1); of that cell's B predictors, the one whose current box has the
highest IoU with the object is responsible for it. The paper leaves two centres in one cell
open (one class slot per cell); the rule here: a cell's objects are served largest first
(area, then the order of the ground truth), each taking the free predictor of highest IoU
(ties: the lower index); the class target p^ of the cell is 1 for the class of every
object served there (two classes: both 1), and an object that finds no free predictor (more
than B in one cell) is not trained on. Targets and IoUs carry no gradient.

At test (`decode`) the class-specific confidence of each box and class is p(c) x
confidence; boxes above `score_thresh` go through non-maximum suppression per class, and
the best `detections_per_img` are kept, with static shapes.

Images: the detection task's canvas (research.data.detection.DetectionTransform) in; where
an image does not fill it (`image_size`), its boxes are still relative to the canvas, the
grid covers the canvas, and detections are clipped to the image. The paper instead warps
every image to 448 x 448.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.detection.faster_rcnn import _check_inputs
from research.detection.postprocess import select_detections
from research.models import darknet
from research.models.alexnet import flatten_chw
from research.models.layers import Conv
from research.ops import boxes as box_ops

ModuleDef = Any
# The paper gives no initialization. The last layer starts near zero, as torchvision's
# detection heads do (normal, std 0.01): the loss then starts where every output is 0
# instead of at large random regressions whose first gradients would wreck a pretrained
# body.
_fc2_init = nn.initializers.normal(0.01)


def check_predictions(predictions, grid: int, boxes_per_cell: int, num_classes: int, fn: str):
  """ValueError unless predictions is [N, S, S, B * 5 + C]."""
  depth = boxes_per_cell * 5 + num_classes
  shape = tuple(np.shape(predictions))
  if len(shape) != 4 or shape[1:] != (grid, grid, depth):
    raise ValueError(
      f"{fn}: predictions must be [N, S, S, B * 5 + C] = [N, {grid}, {grid}, {depth}] (S={grid}, "
      f"B={boxes_per_cell}, C={num_classes}); received shape {shape}."
    )


def split(predictions, boxes_per_cell: int):
  """[..., B * 5 + C] -> (boxes [..., B, 4] (x, y, sqrt w, sqrt h), confidence [..., B],
  class probabilities [..., C])."""
  b = boxes_per_cell
  per_box = predictions[..., : b * 5].reshape(*predictions.shape[:-1], b, 5)
  return per_box[..., :4], per_box[..., 4], predictions[..., b * 5 :]


def to_corners(cell_boxes, grid: int):
  """cell_boxes [N, S, S, B, 4] (x, y relative to the cell, sqrt w, sqrt h relative to the
  image) -> [N, S, S, B, 4] (x1, y1, x2, y2) in units of the image (0..1)."""
  s = grid
  col = jnp.arange(s, dtype=jnp.float32)[None, None, :, None]
  row = jnp.arange(s, dtype=jnp.float32)[None, :, None, None]
  cx = (col + cell_boxes[..., 0]) / s
  cy = (row + cell_boxes[..., 1]) / s
  w, h = jnp.square(cell_boxes[..., 2]), jnp.square(cell_boxes[..., 3])
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def predictor_ious(pred, truth):
  """IoU of each of a cell's predicted boxes with one object: pred [B, 4], truth [4] (x1, y1,
  x2, y2) -> [B]; 0 where a box has no area."""
  lt = jnp.maximum(pred[:, :2], truth[:2])
  rb = jnp.minimum(pred[:, 2:], truth[2:])
  inter = jnp.prod(jnp.clip(rb - lt, 0), axis=-1)
  area = lambda b: jnp.clip(b[..., 2] - b[..., 0], 0) * jnp.clip(b[..., 3] - b[..., 1], 0)  # noqa: E731
  union = area(pred) + area(truth) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def assign(pred_corners, boxes, valid, grid: int):
  """Responsibility of one image (module docstring).

  pred_corners: [S, S, B, 4] the predictors' boxes in image units; boxes: [G, 4] ground
  truth in image units (x1, y1, x2, y2); valid: [G] bool. Returns (row [G], col [G],
  predictor [G] int32, iou [G] of the responsible predictor's box, served [G] bool).
  """
  s, b = grid, pred_corners.shape[2]
  cx = (boxes[:, 0] + boxes[:, 2]) / 2
  cy = (boxes[:, 1] + boxes[:, 3]) / 2
  col = jnp.clip(jnp.floor(cx * s), 0, s - 1).astype(jnp.int32)
  row = jnp.clip(jnp.floor(cy * s), 0, s - 1).astype(jnp.int32)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  order = jnp.lexsort((jnp.arange(len(area)), -area))  # largest first, then by index

  def serve(taken, g):
    ious = predictor_ious(pred_corners[row[g], col[g]], boxes[g])
    free = ~taken[row[g], col[g]]
    j = jnp.argmax(jnp.where(free, ious, -1.0)).astype(jnp.int32)
    ok = valid[g] & free.any()
    taken = taken.at[row[g], col[g], j].set(taken[row[g], col[g], j] | ok)
    return taken, (j, ious[j], ok)

  _, (j, iou, ok) = jax.lax.scan(serve, jnp.zeros((s, s, b), bool), order)
  inverse = jnp.argsort(order)
  return row, col, j[inverse], iou[inverse], ok[inverse]


def yolo_loss(
  predictions,
  boxes,
  labels,
  valid,
  *,
  boxes_per_cell: int = 2,
  num_classes: int = 20,
  lambda_coord: float = 5.0,
  lambda_noobj: float = 0.5,
) -> dict:
  """Eq. 3 of the paper, term by term (module docstring).

  predictions: [N, S, S, B * 5 + C]; boxes: [N, G, 4] (x1, y1, x2, y2) in image units
  (0..1, the canvas); labels: [N, G] int in [0, C); valid: [N, G] bool. Returns the batch
  means of each image's sums: {"loss_xy", "loss_wh" (both with lambda_coord), "loss_obj",
  "loss_noobj" (with lambda_noobj), "loss_class"}; their sum is eq. 3.
  """
  n, s = predictions.shape[0], predictions.shape[1]
  check_predictions(predictions, s, boxes_per_cell, num_classes, "yolo_loss")
  predictions = predictions.astype(jnp.float32)
  cell_boxes, confidence, probs = split(predictions, boxes_per_cell)
  corners = jax.lax.stop_gradient(to_corners(cell_boxes, s))
  boxes = jnp.asarray(boxes, jnp.float32)
  row, col, j, iou, ok = jax.vmap(functools.partial(assign, grid=s))(corners, boxes, valid)

  images = jnp.broadcast_to(jnp.arange(n)[:, None], row.shape)
  # Dropped rows scatter past the end (mode="drop").
  at = (jnp.where(ok, images, n), row, col, j)
  responsible = jnp.zeros(confidence.shape, bool).at[at].set(True, mode="drop")
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  target = jnp.stack(
    [
      (boxes[..., 0] + boxes[..., 2]) / 2 * s - col,
      (boxes[..., 1] + boxes[..., 3]) / 2 * s - row,
      jnp.sqrt(jnp.clip(w, 0)),
      jnp.sqrt(jnp.clip(h, 0)),
    ],
    axis=-1,
  )
  box_target = jnp.zeros(cell_boxes.shape).at[at].set(target, mode="drop")
  conf_target = jnp.zeros(confidence.shape).at[at].set(iou, mode="drop")
  class_target = (
    jnp.zeros(probs.shape)
    .at[(jnp.where(ok, images, n), row, col, jnp.asarray(labels, jnp.int32))]
    .set(1.0, mode="drop")
  )
  has_object = responsible.any(-1)

  sq = jnp.square
  per_image = lambda x: jnp.sum(x.reshape(n, -1), axis=1).mean()  # noqa: E731
  delta = cell_boxes - box_target
  r = responsible.astype(jnp.float32)
  return {
    "loss_xy": lambda_coord * per_image(r * (sq(delta[..., 0]) + sq(delta[..., 1]))),
    "loss_wh": lambda_coord * per_image(r * (sq(delta[..., 2]) + sq(delta[..., 3]))),
    "loss_obj": per_image(r * sq(confidence - conf_target)),
    "loss_noobj": lambda_noobj * per_image((1 - r) * sq(confidence)),
    "loss_class": per_image(has_object[..., None] * sq(probs - class_target)),
  }


@functools.partial(jax.jit, static_argnames=("boxes_per_cell", "score_thresh", "nms_thresh", "top"))
def decode(predictions, image_hw, canvas_hw, *, boxes_per_cell, score_thresh, nms_thresh, top):
  """predictions [N, S, S, B * 5 + C]; image_hw [N, 2] each image's size inside the canvas;
  canvas_hw: (H, W) the input's size -> {"boxes" [N, top, 4] pixels, "scores", "labels"
  0-based, "valid"}: class-specific confidence p(c) x confidence, > score_thresh, NMS per
  class at nms_thresh, the best `top` by score."""
  n, s = predictions.shape[:2]
  cell_boxes, confidence, probs = split(predictions.astype(jnp.float32), boxes_per_cell)
  corners = to_corners(cell_boxes, s) * jnp.asarray([canvas_hw[1], canvas_hw[0]] * 2, jnp.float32)
  c = probs.shape[-1]
  scores = confidence[..., :, None] * probs[..., None, :]  # [N, S, S, B, C]
  labels = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), scores.shape)
  corners = jnp.broadcast_to(corners[..., None, :], (*scores.shape, 4))

  def one(corners, scores, labels, hw):
    corners = box_ops.clip(corners.reshape(-1, 4), hw)
    scores, labels = scores.reshape(-1), labels.reshape(-1)
    return select_detections(corners, scores, labels, scores > score_thresh, 1e-2, nms_thresh, top)

  return jax.vmap(one)(corners, scores, labels, jnp.asarray(image_hw, jnp.float32))


class YOLO(nn.Module):
  """`__call__(images, image_size=None, boxes=None, labels=None, valid=None,
  example_index=None, *, train=False)`: the detector contract of research.detection.

  images: [N, H, W, C] normalized canvases, H and W multiples of the network's stride with
  H / stride = W / stride = `grid`; image_size: [N, 2] each image's (h, w) inside (None: all
  of it); in training boxes [N, G, 4] pixels, labels [N, G] 0-based, valid [N, G].
  Training returns ({"loss_xy", "loss_wh", "loss_obj", "loss_noobj", "loss_class"}, out);
  evaluation returns ({"boxes" [N, D, 4], "scores", "labels", "valid"}, out). out holds the
  network's layers by name and "predictions" [N, S, S, B * 5 + C].

  body: the classifier's convolutions (darknet.Darknet's cfg, loadable from a Darknet run
  under "body"); head: the convolutions after it; hidden: fc1's width (4096).
  per_cell: fc1 and fc2 applied to each cell's features alone (1x1 convolutions, YOLO v2's
  step) instead of to the whole flattened map: an ablation, not the paper's network.
  raw_outputs: evaluation returns {"predictions", "image_hw", "canvas_hw"} instead, for
  `postprocess_raw` (to time the network apart from decoding and NMS).
  """

  def postprocess_raw(self, raw: dict) -> dict:
    """`decode` with this detector's settings on what evaluation returns with raw_outputs.
    Needs no parameters: callable on an unbound YOLO."""
    return decode(
      raw["predictions"],
      raw["image_hw"],
      tuple(raw["canvas_hw"]),
      boxes_per_cell=self.boxes_per_cell,
      score_thresh=self.score_thresh,
      nms_thresh=self.nms_thresh,
      top=self.detections_per_img,
    )

  num_classes: int = 20
  grid: int = 7
  boxes_per_cell: int = 2
  body: Sequence = darknet.YOLO_BODY
  head: Sequence = darknet.YOLO_HEAD
  hidden: int = 4096
  dropout_rate: float = 0.5
  in_channels: int = 3
  lambda_coord: float = 5.0
  lambda_noobj: float = 0.5
  score_thresh: float = 0.005
  nms_thresh: float = 0.5
  detections_per_img: int = 100
  per_cell: bool = False
  raw_outputs: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv

  @property
  def stride(self) -> int:
    return darknet.stride_of((*self.body, *self.head))

  def network(self, images, train: bool):
    """images [N, H, W, C] -> (predictions [N, S, S, B * 5 + C], out)."""
    name = type(self).__name__
    n, h, w = images.shape[:3]
    if (h, w) != (self.grid * self.stride,) * 2 or images.shape[-1] != self.in_channels:
      size = self.grid * self.stride
      raise ValueError(
        f"{name}: images must be [N, {size}, {size}, {self.in_channels}] (grid {self.grid} x "
        f"stride {self.stride}); received shape {tuple(images.shape)}."
      )
    _, out = darknet.Darknet(
      self.body,
      num_classes=0,
      in_channels=self.in_channels,
      dtype=self.dtype,
      conv=self.conv,
      name="body",
    )(images)
    x = out[f"conv{sum(v != 'M' for v in self.body)}"]
    x, head_out = darknet.ConvLayers(
      self.head,
      first=sum(v != "M" for v in self.body) + 1,
      first_pool=sum(v == "M" for v in self.body) + 1,
      dtype=self.dtype,
      conv=self.conv,
      name="head",
    )(x)
    out |= head_out
    depth = self.boxes_per_cell * 5 + self.num_classes
    if self.per_cell:  # the same two layers on every cell's features: 1x1 convolutions
      x = out["fc1"] = darknet.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
      predictions = nn.Dense(depth, kernel_init=_fc2_init, dtype=self.dtype, name="fc2")(x)
    else:
      x = out["fc1"] = darknet.leaky_relu(
        nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(flatten_chw(x))
      )
      x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
      x = nn.Dense(
        self.grid * self.grid * depth, kernel_init=_fc2_init, dtype=self.dtype, name="fc2"
      )(x)
      predictions = x.reshape(n, self.grid, self.grid, depth)
    out["predictions"] = predictions
    return predictions, out

  @nn.compact
  def __call__(
    self,
    images,
    image_size=None,
    boxes=None,
    labels=None,
    valid=None,
    example_index=None,
    *,
    train: bool = False,
  ):
    del example_index  # YOLO samples nothing
    name = type(self).__name__
    if self.num_classes < 1:
      raise ValueError(f"{name}: num_classes must be >= 1 object classes; got {self.num_classes}.")
    _check_inputs(images, image_size, boxes, labels, valid, train, name)
    predictions, out = self.network(jnp.asarray(images), train)
    n, h, w = images.shape[:3]
    if train:
      scale = jnp.asarray([w, h, w, h], jnp.float32)
      losses = yolo_loss(
        predictions,
        jnp.asarray(boxes, jnp.float32) / scale,
        labels,
        jnp.asarray(valid, bool),
        boxes_per_cell=self.boxes_per_cell,
        num_classes=self.num_classes,
        lambda_coord=self.lambda_coord,
        lambda_noobj=self.lambda_noobj,
      )
      return losses, out
    if image_size is None:
      image_size = jnp.broadcast_to(jnp.asarray([h, w], jnp.float32), (n, 2))
    raw = {"predictions": predictions, "image_hw": image_size, "canvas_hw": (h, w)}
    if self.raw_outputs:
      return raw, out
    return self.postprocess_raw(raw), out


# The paper's: 448 x 448 inputs, S = 7, B = 2, C = 20 (VOC).
YOLOv1 = functools.partial(YOLO, grid=7, body=darknet.YOLO_BODY, head=darknet.YOLO_HEAD)
FastYOLOv1 = functools.partial(YOLO, grid=7, body=darknet.FAST_BODY, head=darknet.FAST_HEAD)

# digit_scenes/multi (the :runlocal experiment): 128 x 128 canvases, S = 8 (research.models.
# darknet's SCENES_BODY and SCENES_HEAD, stride 16), fc1 of 1024.
YOLOv1_Scenes = functools.partial(
  YOLO, grid=8, body=darknet.SCENES_BODY, head=darknet.SCENES_HEAD, hidden=1024
)
