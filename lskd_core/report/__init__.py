"""Report of an alpha x T study: ``report.md``, PNG figures and ``results.json``.

Reads a study directory written by :mod:`lskd_core.study` (``study.json`` + ``runs/<run_id>/``)
and assembles the paper's evidence (Chandrasegaran et al., ICML 2022) for the user's own task:

* the accuracy grid (Table 2): student top-1/top-5, mean +- std over seeds, per alpha x T, the
  teachers' row, and the cells where LS and KD are compatible in bold (:mod:`.accuracy`);
* the diffusion index eta (Eq. 1; Table 3) and its pairwise variant (App. K, Table K.1) between
  the lowest T and every higher T, train and val, with S1/S2 from the class hierarchy (App. G.1)
  and from feature space (App. G.2), and their agreement (Table G.1) (:mod:`.eta`);
* the teachers' mean entropy against T (Table H.1) and entropy-matched temperature pairs (:mod:`.entropy`);
* the projection grid (Fig. 1, :mod:`.projection`) and the soft-output profile (Fig. 2, :mod:`.profile`);
* class-wise accuracy for the target classes (Table I, :mod:`.classwise`);
* a verdict in plain words, with how sure it is given the spread over seeds (:mod:`.verdict`).

The task backend (:mod:`lskd_core.study.tasks`) says which score the grid holds (BLEU, Table 5, for
translation) and which analyses apply.
"""

from lskd_core.hierarchy import HierarchyChoice, select_hierarchy
from lskd_core.report.accuracy import accuracy_grid
from lskd_core.report.verdict import compare_cells, verdict
from lskd_core.report.view import StudyView
from lskd_core.report.writer import write_report
from lskd_core.study.tasks.translation import score_bleu

__all__ = ["write_report", "score_bleu", "compare_cells", "accuracy_grid", "verdict", "StudyView",
           "select_hierarchy", "HierarchyChoice"]
