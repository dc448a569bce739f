"""The printed model summary: every layer with its output shape and parameter count."""

from research.models.lenet import LeNet5
from research.models.summary import summary


def test_lenet_summary_lists_layers_shapes_and_the_total():
  text = summary(LeNet5(), (1, 32, 32, 1))
  for row in ("float32[1,28,28,6]", "156 (624 B)", "48,120", "float32[1,84]"):
    assert row in text
  assert "Total Parameters: 61,706" in text
