"""laudtriton: real sparse execution of LAUDNet dynamic networks.

``laudtriton.compile(model)`` turns a LAUD model (``laudtriton.nn``) into a plan of sparse
kernels per block; ``laudtriton.nn`` holds the reference (training) semantics.
"""

from . import nn, runtime
from ._version import __version__
from .compile import compile
from .compiled import CompiledModel

__all__ = ["CompiledModel", "__version__", "compile", "nn", "runtime"]
