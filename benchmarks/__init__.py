"""Speed comparisons against the reference implementations, run as `python -m benchmarks.<name>`."""
