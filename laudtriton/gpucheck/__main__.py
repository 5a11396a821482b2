"""python -m laudtriton.gpucheck: the gpucheck command alone (as ``laudtriton gpucheck``)."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
