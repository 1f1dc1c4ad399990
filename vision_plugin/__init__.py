"""lskd vision plugin: a torchvision-reference-style trainer for LS teachers and KD students.

Entry points (paper Sec. 2 and 5: train LS teachers, distil students at temperature T, then
export penultimate features for the diffusion index of Eq. 1):

* ``python vision_plugin/train.py`` / ``python -m vision_plugin.train`` / ``torchrun vision_plugin/train.py``
* ``python -m vision_plugin.export_features``
* ``python -m vision_plugin.teacher_cache build``: the teacher's outputs on every (epoch, sample)
  view, for ``train.py --teacher-cache DIR``
* ``vision_plugin.kd``: ``add_kd_args``, ``build_teacher``, ``KDCriterion`` for users who keep their own
  copy of torchvision's reference ``train.py``.

Submodules are imported on demand so that ``import vision_plugin`` stays cheap and
``python -m vision_plugin.train`` does not find the module already imported.
"""

__all__ = ["__version__"]

try:
    from lskd_core import __version__
except ImportError:  # pragma: no cover - lskd_core ships with this package
    __version__ = "0.0.0"
