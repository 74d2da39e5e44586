"""jobcast for Python: report a job's progress to a jobcast gateway
(``ProgressTracker``, ``AsyncProgressTracker``), mint the tokens browsers and
services use (``mint_token``), and follow a job from a service (``watch``).
The wire format is the gateway's docs/protocol.md.
"""

from .progress import JobProgress, ProgressError, EtaEstimator, validate_stages
from .tokens import mint_token
from .tracker import (
    AsyncProgressTracker,
    DocumentTooLarge,
    ProgressTracker,
    DEFAULT_KEY_PREFIX,
    DEFAULT_GROUP_PREFIX,
    DEFAULT_TTL_SECS,
)
from .watch import WatchError, watch

__all__ = [
    "AsyncProgressTracker",
    "DocumentTooLarge",
    "EtaEstimator",
    "JobProgress",
    "ProgressError",
    "ProgressTracker",
    "WatchError",
    "DEFAULT_GROUP_PREFIX",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_TTL_SECS",
    "mint_token",
    "validate_stages",
    "watch",
]
__version__ = "0.1.0"
