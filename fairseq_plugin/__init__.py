"""lskd's fairseq plugin: criterion ``ls_kd`` (label smoothing x temperature KD, paper Sec. 2, Table 5).

Load it with ``fairseq-train ... --user-dir fairseq_plugin`` (a path to this folder), or install the
autoload hook (``python -m fairseq_plugin.autoload install``) so that plain ``fairseq-train
--criterion ls_kd`` finds it. fairseq only auto-imports ``tasks/`` and ``models/`` of a user dir, so
this ``__init__`` imports the criterion itself.

Importing the plugin also allow-lists the data-only types of fairseq checkpoints for torch's
``weights_only`` unpickler (:mod:`fairseq_plugin.safe_load`), so ``fairseq-generate`` /
``--restore-file`` read fairseq checkpoints on torch >= 2.6 in any command that loads the plugin.
"""

from .safe_load import register_safe_globals

register_safe_globals()

from . import criterions  # noqa: E402,F401  (registers the ls_kd criterion)

__all__ = ["criterions", "register_safe_globals"]
