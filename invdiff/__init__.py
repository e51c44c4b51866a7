"""invdiff: restore images and scans from degraded measurements with diffusion priors."""

__version__ = "0.1.0"

from .methods import METHODS, Method  # noqa: E402
from .restore import Result, restore  # noqa: E402
from .volume import restore_volume  # noqa: E402

__all__ = ["METHODS", "Method", "Result", "restore", "restore_volume", "__version__"]
