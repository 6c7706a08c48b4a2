"""Filter generators: each turns the predictor's features into dynamic filters (see `base.FilterGenerator`)."""

from dfn.generators.base import FilterGenerator
from dfn.generators.condconv import CondConv
from dfn.generators.condinst import CondInst
from dfn.generators.dfn import DFN, PixelBaseline
from dfn.generators.dmnet import DMNet
from dfn.generators.dynamicconv import DynamicConv
from dfn.generators.dynet import DyNet
from dfn.generators.hdfnet import HDFNet
from dfn.generators.schedule import TemperatureAnnealing

__all__ = ["FilterGenerator", "DFN", "PixelBaseline", "CondConv", "DynamicConv", "DyNet", "CondInst",
           "HDFNet", "DMNet", "TemperatureAnnealing"]
