"""threadlog's benchmarks: `python -m bench` measures and writes docs/benchmarks.md.

Each benchmark repeats its measurement and compares it with a baseline measured in
the same run, because the machine is small, shared and noisy: ratios travel better
than absolute figures.
"""
