"""Tasks other than video prediction: the paper's other experiments, each a LightningModule picked in YAML
with ``model: {class_path: dfn.tasks.<Task>}`` (the video task is ``dfn.module.VideoPrediction``)."""

from dfn.tasks.steerable import SteerableFilterTask  # noqa: F401  (De Brabandere et al. 2016, Section 4.1)
from dfn.tasks.stereo import StereoPrediction  # noqa: F401  (De Brabandere et al. 2016, Section 4)
