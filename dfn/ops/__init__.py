"""Dynamic filtering operators: per-pixel local filtering and per-sample convolution.

``local_filter`` / ``dynamic_conv`` / ``row_filter`` (1×K horizontal windows: the stereo filters)
are the fast paths; the ``*_reference`` functions are short einops versions that define the
semantics (tests compare against them). ``local_filter`` has a
Triton backend (``dfn.ops.local_filter_triton``, imported only when used: triton is optional).
All three take ``padding_mode`` "zeros" (paper, default), "replicate" or "reflect".
"""

from dfn.ops.dynamic_conv import dynamic_conv, dynamic_conv_loop, dynamic_conv_reference
from dfn.ops._checks import PADDING_MODES, PaddingMode
from dfn.ops.local_filter import local_filter, local_filter_reference
from dfn.ops.row_filter import row_filter, row_filter_reference

__all__ = [
    "local_filter",
    "local_filter_reference",
    "row_filter",
    "row_filter_reference",
    "dynamic_conv",
    "dynamic_conv_reference",
    "dynamic_conv_loop",
    "PaddingMode",
    "PADDING_MODES",
]
