"""``lskd advise``: the study's answer (which alpha, which T) at a fraction of its cost.

Successive halving over the grid's (alpha, T) cells with Optuna's pruner
(:mod:`~lskd_core.advise.allocation`), student runs fed by the study's teacher caches
(:mod:`~lskd_core.advise.runner`), the paper's early signals as tie-breaks
(:mod:`~lskd_core.advise.signals`, :mod:`~lskd_core.advise.evidence`), and the advice with its
confidence from the finalists' seeds (:mod:`~lskd_core.advise.report`). CLI:
:mod:`~lskd_core.advise.cli` (``python -m lskd_core.advise``, ``lskd-advise``). docs/advise.md.
"""

from lskd_core.advise.cli import main

__all__ = ["main"]
