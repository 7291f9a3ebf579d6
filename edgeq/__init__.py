"""edgeq: take a Hugging Face model to quantized engines on Jetson Orin, RTX and H100 devices.

This module stays import-light: devices import ``edgeq.sdk`` and must not pay for the host toolchain.
"""

from edgeq._version import __version__
from edgeq.errors import EdgeqError

__all__ = ["__version__", "EdgeqError"]
