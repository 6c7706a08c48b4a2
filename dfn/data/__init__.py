"""Data sources for video frame prediction.

Every DataModule yields float32 batches (B, T, C, H, W) in [0, 1] with T = frames_in + frames_out,
exposes ``frames_in, frames_out, channels, image_size`` from ``__init__``, and shards itself over ranks
(see ``common.py``). Select one from YAML: ``data: {class_path: dfn.data.MovingMNIST, init_args: {...}}``.
"""

from .common import ClipDataModule, ShuffledShard, StridedShard
from .h5 import HighwayH5
from .highway import SyntheticHighway, synthetic_highway
from .moving_mnist import MovingMNIST, bounce_trajectories, load_moving_mnist_file, moving_mnist
from .synthetic_motion import SyntheticMotion
from .steerable import SteerableFilters  # noqa: F401  (not video: images, angles and steered targets)
from .stereo import MiddleburyStereo, SyntheticStereo  # noqa: F401  (not video: stereo pairs and disparity)
from .video import VideoFolder

__all__ = [
    "MovingMNIST", "SyntheticHighway", "SyntheticMotion", "VideoFolder", "HighwayH5",
    "moving_mnist", "synthetic_highway", "bounce_trajectories", "load_moving_mnist_file",
    "ClipDataModule", "StridedShard", "ShuffledShard",
]
