"""The performance measurements of ``python -m benchmark perf`` (the command: ``benchmark.perf.command``).

One-way inside the package too (tests/test_imports.py): ``common`` (options, the report, inputs) ← ``models`` (the
timed models) ← ``profile``, ``suites``, ``curves`` ← ``extras`` (optional sections) ← ``command``. Importing the
package imports nothing, so the command line's ``--help`` stays free of torch."""
