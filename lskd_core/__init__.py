"""lskd core: label smoothing x knowledge distillation analysis (Chandrasegaran et al., ICML 2022).

Framework-light: depends on torch, numpy, scipy and matplotlib only. Submodules are imported
lazily by callers (``from lskd_core.losses import kd_loss``) so that ``import lskd_core`` stays cheap.
"""

__version__ = "0.2.0"
