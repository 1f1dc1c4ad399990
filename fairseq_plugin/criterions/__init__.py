"""fairseq criteria of lskd; importing this package registers ``ls_kd``."""

from . import ls_kd  # noqa: F401  (registration side effect)
