"""Anchors: hand-checked numbers, layout, torchvision AnchorGenerator parity, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.detection import anchors as anchors_lib


def test_cell_anchors_are_faster_rcnn_nine_ratio_major():
  cell = anchors_lib.cell_anchors()
  assert cell.shape == (9, 4) and cell.dtype == np.float32
  # Ratio 0.5 (h / w), size 128: w = 128 * sqrt(2) = 181.02, h = 90.51, halves rounded.
  np.testing.assert_array_equal(cell[0], [-91, -45, 91, 45])
  np.testing.assert_array_equal(
    cell[3:6], [[-64, -64, 64, 64], [-128, -128, 128, 128], [-256] * 2 + [256] * 2]
  )
  np.testing.assert_array_equal(cell[8], [-181, -362, 181, 362])
  w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
  # The areas stay 128^2, 256^2, 512^2 up to the rounding, for every ratio.
  np.testing.assert_allclose(np.sqrt(w * h).reshape(3, 3), [[128, 256, 512]] * 3, rtol=0.01)
  np.testing.assert_allclose((h / w).reshape(3, 3), [[0.5] * 3, [1] * 3, [2] * 3], rtol=0.02)


def test_anchors_are_position_major_from_the_cell_corner():
  a = anchors_lib.anchors((2, 3), 16, sizes=(32, 64), aspect_ratios=(1.0,))
  assert a.shape == (2 * 3 * 2, 4)
  # Index (y * W + x) * A + s; the cell's anchors are centred on (16 x, 16 y).
  np.testing.assert_array_equal(a[0], [-16, -16, 16, 16])
  np.testing.assert_array_equal(a[1], [-32, -32, 32, 32])
  np.testing.assert_array_equal(a[(0 * 3 + 1) * 2], [0, -16, 32, 16])
  np.testing.assert_array_equal(a[(1 * 3 + 2) * 2 + 1], [0, -16, 64, 48])
  # Non-square strides: (stride_y, stride_x).
  b = anchors_lib.anchors((2, 2), (10, 20), sizes=(2,), aspect_ratios=(1.0,))
  np.testing.assert_array_equal(
    b, [[-1, -1, 1, 1], [19, -1, 21, 1], [-1, 9, 1, 11], [19, 9, 21, 11]]
  )


@pytest.mark.parametrize(
  "image, features, sizes, ratios",
  [
    ((600, 800), [(38, 50)], ((128, 256, 512),), ((0.5, 1.0, 2.0),)),  # Faster R-CNN VGG16
    ((203, 317), [(13, 20)], ((50.5, 97.0),), ((0.3, 1.7, 4.0),)),  # odd strides, float sizes
    (
      (256, 320),
      [(64, 80), (32, 40), (16, 20), (8, 10), (4, 5)],
      ((32,), (64,), (128,), (256,), (512,)),
      ((0.5, 1.0, 2.0),) * 5,
    ),  # torchvision's FPN
  ],
)
def test_anchors_equal_torchvision_anchor_generator(image, features, sizes, ratios):
  torch = pytest.importorskip("torch")
  tv = pytest.importorskip("torchvision.models.detection.anchor_utils")
  image_list = pytest.importorskip("torchvision.models.detection.image_list")
  gen = tv.AnchorGenerator(sizes, ratios)
  images = image_list.ImageList(torch.zeros(1, 3, *image), [image])
  expected = gen(images, [torch.zeros(1, 1, *f) for f in features])[0].numpy()
  ours = anchors_lib.multilevel_anchors(image, features, sizes, ratios)
  assert ours.dtype == np.float32
  np.testing.assert_array_equal(ours, expected)
  if len(features) == 1:
    h, w = features[0]
    single = anchors_lib.anchors(features[0], (image[0] // h, image[1] // w), sizes[0], ratios[0])
    np.testing.assert_array_equal(single, expected)
    np.testing.assert_array_equal(
      anchors_lib.cell_anchors(sizes[0], ratios[0]), gen.cell_anchors[0].numpy()
    )


def test_multilevel_anchors_takes_one_ratio_list_for_all_levels():
  both = anchors_lib.multilevel_anchors((64, 64), [(8, 8), (4, 4)], ((16,), (32,)), (0.5, 2.0))
  np.testing.assert_array_equal(
    both[: 8 * 8 * 2], anchors_lib.anchors((8, 8), 8, (16,), (0.5, 2.0))
  )
  np.testing.assert_array_equal(
    both[8 * 8 * 2 :], anchors_lib.anchors((4, 4), 16, (32,), (0.5, 2.0))
  )


def test_inside_image_hand_checked_and_jit():
  boxes = np.array(
    [[0, 0, 100, 50], [-1, 0, 10, 10], [0, 0, 101, 10], [0, 0, 10, 51], [90, 40, 100, 50]],
    np.float32,
  )
  np.testing.assert_array_equal(
    anchors_lib.inside_image(boxes, (50, 100)), [True, False, False, False, True]
  )
  np.testing.assert_array_equal(
    anchors_lib.inside_image(boxes, (50, 100), allowed_border=1), [True, True, True, True, True]
  )
  # The image size may be traced: one compiled function for every image.
  f = jax.jit(anchors_lib.inside_image)
  np.testing.assert_array_equal(f(boxes, jnp.array([50, 101])), [True, False, True, False, True])


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: anchors_lib.cell_anchors((128, 0)), r"sizes must be .*positive.*got \(128, 0\)"),
    (lambda: anchors_lib.cell_anchors((-32,)), r"sizes must be .*positive.*got \(-32,\)"),
    (lambda: anchors_lib.cell_anchors((float("nan"),)), r"sizes must be .*positive.*got \(nan,\)"),
    (lambda: anchors_lib.cell_anchors(()), r"sizes must be a non-empty.*got \(\)"),
    (
      lambda: anchors_lib.cell_anchors((32,), (1.0, 0.0)),
      r"aspect_ratios must be .*positive.*got \(1.0, 0.0\)",
    ),
    (
      lambda: anchors_lib.cell_anchors((32,), (-0.5,)),
      r"aspect_ratios must be .*positive.*got \(-0.5,\)",
    ),
    (lambda: anchors_lib.anchors((4, 4), 0), r"stride must be a positive int.*got 0"),
    (
      lambda: anchors_lib.anchors((4, 4), (16, -16)),
      r"stride must be a positive int.*got \(16, -16\)",
    ),
    (
      lambda: anchors_lib.anchors((0, 4), 16),
      r"feature_shape_hw must be a positive int.*got \(0, 4\)",
    ),
    (lambda: anchors_lib.anchors((4, 4, 3), 16), r"feature_shape_hw must be .*got \(4, 4, 3\)"),
    (lambda: anchors_lib.anchors((4, 4), 16, (0,)), r"sizes must be .*positive.*got \(0,\)"),
    (
      lambda: anchors_lib.multilevel_anchors((64, 64), [(8, 8), (4, 4)], ((32,),)),
      r"one entry per level \(2 feature maps\), got 1 sizes",
    ),
    (lambda: anchors_lib.multilevel_anchors((64, 64), [(128, 8)], ((32,),)), r"must not exceed"),
    (
      lambda: anchors_lib.inside_image(np.zeros((3, 5)), (8, 8)),
      r"boxes must be \[..., 4\].*\(3, 5\)",
    ),
    (lambda: anchors_lib.inside_image(np.zeros((3, 4)), (8,)), r"image_shape_hw must be \(H, W\)"),
  ],
)
def test_bad_input_names_argument_expected_and_received(call, message):
  with pytest.raises(ValueError, match=message):
    call()
