"""edgeq benchmarks: scripts (not tests) that measure quality, speed, size, build cost and CPI; see BENCHMARKS.md."""
