"""CPU convolutions through oneDNN (XLA FFI), built from `conv.cc` on first use.

    from research.ops import onednn
    onednn.available()          # built, loaded and registered here?
    onednn.status()             # (available, "oneDNN 3.2.0, 2 threads" or why not)
    y = onednn.conv2d(x, w, b, strides=(2, 2), padding=((3, 3), (3, 3)))

Every model convolution comes here on a CPU backend where the extension is available
(research.models.layers; lax on GPUs and TPUs, RESEARCH_CONV=lax forces lax). Activations
stay NHWC and weights HWIO, the models' own arrays; the extension reorders weights, and the
weight gradient's inputs, into the layouts oneDNN chooses (blocked on AVX2 and AVX-512).
"""

from research.ops.onednn.convolution import Geometry, conv2d, plan
from research.ops.onednn.library import available, status

__all__ = ["Geometry", "available", "conv2d", "plan", "status"]
