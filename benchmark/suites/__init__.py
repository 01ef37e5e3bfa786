"""Suite modules register themselves on import; this package imports all of them."""
from benchmark.registry import REGISTRY

_before = {suite.name for suite in REGISTRY.suites()}
from benchmark.suites import detr, kd, ovd  # noqa: F401, E402  (each registers its suite and methods)

SUITES = tuple(suite.name for suite in REGISTRY.suites() if suite.name not in _before)  # not tests' own suites
