"""invdiff: restore images and scans from degraded measurements with diffusion priors.

The core lives here (``restore``, ``restore_volume``, ``METHODS``, the samplers,
metrics, exact posteriors, I/O, data sets) over :mod:`invdiff.operators` and
:mod:`invdiff.priors`; three wings sit above it and are imported by name:
:mod:`invdiff.medical` (CT, MRI, MONAI), :mod:`invdiff.train` (prior training)
and :mod:`invdiff.cli` (the command line).
"""

__version__ = "0.1.0"

from . import datasets, operators, priors  # noqa: E402
from .methods import METHODS, Method  # noqa: E402
from .restore import Result, restore  # noqa: E402
from .calibration import calibrate  # noqa: E402
from .intervals import Calibration  # noqa: E402
from .volume import restore_volume  # noqa: E402

__all__ = ["METHODS", "Method", "Result", "Calibration", "calibrate", "datasets", "operators", "priors", "restore", "restore_volume", "__version__"]
