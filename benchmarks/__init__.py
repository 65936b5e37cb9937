"""conntrace's benchmark: its cost against a baseline and against its peers.

Run ``python -m benchmarks`` (or ``--quick``); see ``docs/performance.md``.
"""
