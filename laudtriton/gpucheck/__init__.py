"""``laudtriton gpucheck``, the one prepared GPU run (GPU.md section 4): the command
(``command``), the run's record (``record``) and its parts: 1 ``machine``, 2 ``checks``,
their compiles first in worker processes (``warm``), 3 ``blocks``, 4 ``whole``; what it
writes and prints from its timing rows is ``laudtriton.gpureport``. ``devicetime`` holds
the device-time and CUDA-graph timings that ``benchmarks/gpu_overhead.py`` adds."""
