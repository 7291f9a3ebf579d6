"""edgeq.targets: target hardware profiles, as data."""
