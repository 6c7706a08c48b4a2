"""dfn: Dynamic Filter Networks (De Brabandere et al., NIPS 2016) and the dynamic-convolution family
for video frame prediction."""

__version__ = "0.1.0"
