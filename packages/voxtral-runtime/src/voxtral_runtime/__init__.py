"""voxtral-runtime: run exported Voxtral Realtime programs (local transcription, gRPC server)."""

import os

# ExecuTorch parallelises every method on its own thread pool. Its attention kernel calls BLAS inside that pool, and
# BLAS's OpenMP threads then compete with it for the same cores: a full-size streaming decoder step took 921 ms with
# OpenMP's default threads and 434 ms with one (benchmarks/step_time.py). OpenMP reads this once, when torch loads,
# so it is set before any torch import; a value the user sets wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

__version__ = "0.1.0"
