"""Suite modules register themselves on import; this package imports all of them."""
from benchmark.suites import detr, kd, ovd  # noqa: F401  (each registers its suite and methods)
