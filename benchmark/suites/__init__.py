"""Suite modules register themselves on import; this package imports all of them."""
from benchmark.registry import REGISTRY, SuiteSpec
from benchmark.suites import kd, ovd  # noqa: F401  (each registers its suite and methods)

# Declared so that `list` shows the whole product; it refuses to run until its methods land.
REGISTRY.register_suite(SuiteSpec(
    name="detr", question="Why does DETR converge slowly, and how do DAB-DETR and DN-DETR fix it?",
    dataset="digits world detection canvases, or COCO", config={}, profiles={},
    status="its methods (detr, dab_detr, dn_dab_detr) are not implemented yet (issue #3)",
    course_questions=(
        "A1. Why do DETR-family models converge slowly? (matching instability; slow sparsification of decoder "
        "cross-attention; positional attention of learned queries)",
        "A2. How do DAB-DETR (4-D anchor queries) and DN-DETR (denoising queries) address it?")))
