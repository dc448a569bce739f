"""CPU convolutions through oneDNN (XLA FFI), built from `conv.cc` on first use.

    from research.ops import onednn
    onednn.available()          # built, loaded and registered here?
    onednn.status()             # (available, "oneDNN 3.2.0, 2 threads" or why not)
    y = onednn.conv2d(x, w, b, strides=(2, 2), padding=((3, 3), (3, 3)))

The models do not call it yet: routing every model convolution here on a CPU backend
(research.models.layers, lax on GPUs and TPUs, RESEARCH_CONV=lax to force lax) is the
next step of its issue.
"""

from research.ops.onednn.convolution import Geometry, conv2d, plan
from research.ops.onednn.library import available, status

__all__ = ["Geometry", "available", "conv2d", "plan", "status"]
