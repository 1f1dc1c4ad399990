"""lskd's fairseq plugin: criterion ``ls_kd`` (label smoothing x temperature KD, paper Sec. 2, Table 5).

Load it with ``fairseq-train ... --user-dir fairseq_plugin`` (a path to this folder), or install the
autoload hook (``python -m fairseq_plugin.autoload install``) so that plain ``fairseq-train
--criterion ls_kd`` finds it. fairseq only auto-imports ``tasks/`` and ``models/`` of a user dir, so
this ``__init__`` imports the criterion itself.

Importing the plugin also allow-lists the data-only types of fairseq checkpoints for torch's
``weights_only`` unpickler (:mod:`fairseq_plugin.safe_load`), so ``fairseq-generate`` /
``--restore-file`` read fairseq checkpoints on torch >= 2.6 in any command that loads the plugin,
and makes our own error types end a fairseq command with one line (:mod:`fairseq_plugin.errors`).
"""

import os as _os

from .errors import install_excepthook
from .safe_load import register_safe_globals


class _SameFolderPath(list):
    """This package's ``__path__``: membership compares real paths.

    fairseq accepts ``--user-dir X`` for an already imported package only if the string
    ``abspath(X)`` is in the package's ``__path__``; the same folder reached through a symlinked
    parent (common on clusters) or imported once through the autoload would otherwise be refused
    as "not globally unique". Any spelling of this folder now counts as this folder.
    """

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, (str, _os.PathLike)):
            return False
        target = _os.path.realpath(item)
        return any(_os.path.realpath(entry) == target for entry in list.__iter__(self))


__path__ = _SameFolderPath(__path__)  # noqa: F821 (set by the import system)

register_safe_globals()
install_excepthook()

from . import criterions  # noqa: E402,F401  (registers the ls_kd criterion)

__all__ = ["criterions", "register_safe_globals"]
