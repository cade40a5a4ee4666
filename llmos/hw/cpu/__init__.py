"""llmos.hw.cpu: the CPUs (models) llmos runs programs on.

Importing this package sets GOMP_SPINCOUNT to params.OMP_SPIN_COUNT for llama.cpp's OpenMP
runtime, unless the environment already says how OpenMP threads wait (OMP_WAIT_POLICY or
GOMP_SPINCOUNT). The runtime reads it once, when llama.cpp's library is loaded, which happens
only under this package (`llmos.hw.cpu.engine`, `llmos.hw.cpu.quant`, `llmos.hw.cpu.weights`);
code that loads `llama_cpp` before importing llmos keeps the runtime's defaults. Nothing else
happens on import.
"""

import os

from llmos import params

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = str(params.OMP_SPIN_COUNT)
