"""Dynamic filtering operators: per-pixel local filtering and per-sample convolution.

``local_filter`` / ``dynamic_conv`` are the fast paths; the ``*_reference`` functions are short
einops versions that define the semantics (tests compare against them).
"""

from dfn.ops.dynamic_conv import dynamic_conv, dynamic_conv_loop, dynamic_conv_reference
from dfn.ops.local_filter import local_filter, local_filter_reference

__all__ = [
    "local_filter",
    "local_filter_reference",
    "dynamic_conv",
    "dynamic_conv_reference",
    "dynamic_conv_loop",
]
