"""App. H's entropy matching as a study run: ``python -m lskd_core.study.match``.

For every LS teacher (alpha > 0) and every temperature T of ``--at``, find the plain teacher's
temperature T' at which its mean entropy on the exported training logits equals the LS teacher's
mean entropy at T (:func:`lskd_core.smoothness.match_temperature`; Table H.1's bold pairs), and
write ``matched.json``::

    {"format": "lskd-matched-temperatures", "version": 1,
     "temperatures": {"a0.1_T1": 1.4813, ...},          # read by the matched students at launch
     "pairs": [{"key": "a0.1_T1", "plain_alpha": 0.0, "ls_alpha": 0.1, "ls_temperature": 1.0,
                "matched_temperature": 1.4813, "ls_entropy": 0.888, "plain_entropy": 0.888,
                "plain_logits": ".../features.npz", "ls_logits": ".../features.npz", "samples": N}]}

The entropies are those of the exported teachers' logits on the (capped) training subset, as in
App. H ("average entropy using the training set"). Bad input is one line naming the file, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from lskd_core import smoothness
from lskd_core.atomic import atomic_write_json
from lskd_core.checks import check_alpha, check_temperature
from lskd_core.features_io import FeaturesFileError, load_features
from lskd_core.study.plan import matched_key

__all__ = ["match_pairs", "main"]

FORMAT = "lskd-matched-temperatures"
# log-T tolerance of the root: the matched entropies then agree to ~1e-12 relative, far inside
# the 1e-6 a reader would check
_TOL = 1e-11


def _logits(path: str) -> np.ndarray:
    try:
        f = load_features(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such features file (run the teacher's train export first)") from None
    except FeaturesFileError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if f.logits is None:
        raise ValueError(f"{path} holds no logits: export the teacher with --save-logits")
    return np.asarray(f.logits)


def match_pairs(plain: np.ndarray, ls: Sequence[Tuple[float, np.ndarray]], temperatures: Sequence[float],
                plain_alpha: float = 0.0) -> List[dict]:
    """One record per (LS alpha, T): the plain teacher's T' and both mean entropies."""
    pairs = []
    for alpha, logits in ls:
        if logits.shape[1] != plain.shape[1]:
            raise ValueError(f"the alpha = {alpha} teacher has {logits.shape[1]} classes, the plain one "
                             f"{plain.shape[1]}")
        for t in temperatures:
            target = smoothness.mean_entropy(logits, t)
            t_match = smoothness.match_temperature(plain, target, tol=_TOL)
            pairs.append({"key": matched_key(alpha, t), "plain_alpha": plain_alpha, "ls_alpha": alpha,
                          "ls_temperature": t, "matched_temperature": t_match, "ls_entropy": target,
                          "plain_entropy": smoothness.mean_entropy(plain, t_match),
                          "samples": int(plain.shape[0])})
    return pairs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lskd_core.study.match",
                                description="Entropy-matched temperatures of the plain teacher (App. H).")
    p.add_argument("--plain", required=True, help="the plain (alpha = 0) teacher's train export with logits")
    p.add_argument("--plain-alpha", type=float, default=0.0, help="its label smoothing (default 0)")
    p.add_argument("--ls", nargs=2, action="append", required=True, metavar=("ALPHA", "FEATURES"),
                   help="an LS teacher's alpha and train export with logits (repeatable)")
    p.add_argument("--at", type=float, nargs="+", required=True, help="the LS teachers' temperatures to match")
    p.add_argument("--out", required=True, help="matched.json to write")
    return p


def _main(argv: Optional[Sequence[str]]) -> int:
    args = _parser().parse_args(argv)
    temps = [check_temperature(t, "--at") for t in args.at]
    ls = []
    for alpha, path in args.ls:
        try:
            a = check_alpha(float(alpha), "--ls ALPHA")
        except ValueError:
            raise ValueError(f"--ls ALPHA must be a label-smoothing value in [0, 1), got {alpha!r}") from None
        ls.append((a, path))
    plain = _logits(args.plain)
    pairs = []
    for alpha, path in ls:
        for rec in match_pairs(plain, [(alpha, _logits(path))], temps, plain_alpha=args.plain_alpha):
            pairs.append(dict(rec, plain_logits=args.plain, ls_logits=path))
    atomic_write_json(Path(args.out), {"format": FORMAT, "version": 1,
                                       "temperatures": {r["key"]: r["matched_temperature"] for r in pairs},
                                       "pairs": pairs})
    for r in pairs:
        print(f"{r['key']}: plain teacher T' = {r['matched_temperature']:.6g} "
              f"(entropy {r['plain_entropy']:.6f} = LS teacher's {r['ls_entropy']:.6f})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: bad input -> one line on stderr, exit status 2."""
    try:
        return _main(argv)
    except ValueError as exc:
        print(f"python -m lskd_core.study.match: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
