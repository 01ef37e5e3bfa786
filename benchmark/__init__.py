"""cvpdl-bench: the harness (CLI, registry, seeded runner, tracking, results and reports)."""
