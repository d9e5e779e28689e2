"""The old home of the benchmarks and checks, now :mod:`dae.experiments`; kept until no caller names it."""
