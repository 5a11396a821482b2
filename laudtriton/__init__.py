"""laudtriton: real sparse execution of LAUDNet dynamic networks."""

from . import nn
from ._version import __version__

__all__ = ["__version__", "nn"]
