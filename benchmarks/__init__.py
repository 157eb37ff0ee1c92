"""Benchmarks of the forecast graph: ``python -m benchmarks.run`` (or ``make bench``).

Nothing here is imported by the product or the tests; see ``benchmarks/README.md``.
"""
