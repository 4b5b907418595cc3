"""HET-GMP-style placement: which host owns each embedding row, which host trains each sample, and which
remote rows each host mirrors.  `spec` is the pure value type every other part shares."""

from .spec import Placement

__all__ = ["Placement"]
