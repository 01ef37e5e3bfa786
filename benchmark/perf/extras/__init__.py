"""Optional ``perf`` sections: measurements of one-off questions, each off by default behind its own flag (``perf
--compile``, ``perf --ddp``, ``perf --population``, ``perf --bf16``). A section is a module here that registers a
``PerfExtra`` (``base``); ``perf`` adds its flag, runs it at its stage when asked and adds its note under a missed
goal. Sections import torch inside their functions, so that ``perf --help`` stays fast."""
from benchmark.perf.extras import bf16, compiled, ddp, population  # noqa: F401  (each registers its section)
from benchmark.perf.extras.base import EXTRAS, PerfExtra, TrainingBench, run_stage

__all__ = ["EXTRAS", "PerfExtra", "TrainingBench", "run_stage"]
