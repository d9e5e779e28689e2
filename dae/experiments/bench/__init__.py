"""Benchmarks and checks that print figures; their jobs are ``jobs/bench_*.py``, ``jobs/quality_train.py``
and ``jobs/gpu_check.py`` (``make bench-denoise``, ``make bench-train``, ``make quality-train``, ``make gpu-check``)."""
