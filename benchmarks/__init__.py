"""aio88's benchmarks: run ``python -m benchmarks`` for all of them, or one module alone."""
