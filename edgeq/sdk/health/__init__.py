"""Health: canary scoring against the FP reference, the monitor that triggers fallback, Prometheus metrics."""
