"""``python -m lskd_core.eta`` / ``lskd-eta``: the diffusion index eta (Eq. 1) of two feature files.

    python -m lskd_core.eta --before FEATS_T1.npz --after FEATS_T2.npz \\
        --target 3 --similar 1 2 --dissimilar 5 6 7 [--pairwise] [--json]

Sets for many targets: ``--sets SETS.json`` (``{"3": {"similar": [1, 2], "dissimilar": [5, 6]}}``),
a hierarchy (``--hierarchy PARENTS.json`` or the built-in ``--hierarchy fashion-mnist``;
``--wordnet`` when class_names are ImageNet wnids; ``--num-similar --num-dissimilar --seed``) or
feature space (``--feature-sets 1,90``: closest 1 % / farthest 90 % by the centroids of
``--reference`` or else ``--before``, App. G.2). Classes may be given as indices or as class names from the files.

``--json`` prints exactly one JSON object (``--out FILE`` writes it, or the table, atomically to
FILE instead of stdout)::

    {"results": [{"target", "eta_s1", "eta_s2", "similar", "dissimilar", ...}, ...],
     "sets_ranked_by": null | "before: PATH" | "reference: PATH"}

eta in percent. With ``--pairwise`` each result also has App. K's two variants:
``eta_s1_pairwise_sq`` / ``eta_s2_pairwise_sq`` (mean SQUARED pairwise distance of the raw
features, closed form; ``eta_s1_pairwise`` / ``eta_s2_pairwise`` are deprecated aliases of these)
and, when both files hold the final layer's ``weight``, ``eta_s1_pairwise_proj`` /
``eta_s2_pairwise_proj`` (the paper's average Euclidean distance between projected features,
:mod:`lskd_core.pairwise`). ``sets_ranked_by`` names the features whose centroids chose the sets:
``--feature-sets`` ranks classes by ``--reference`` when given (App. G.2 ranks in a separate
reference model), else by ``--before``, the same features that are then measured (said in the
output); with a hierarchy, ``--reference`` breaks S1 ties (else a name-keyed seeded hash).

Errors a user can cause (bad arguments, a missing, unreadable, damaged or inconsistent file, a
bad sets/hierarchy JSON, an unwritable ``--out``) exit with status 2 and one line on stderr naming
the file and the remedy; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
from typing import List, NoReturn, Optional, Sequence, Tuple

from lskd_core.atomic import atomic_open
from lskd_core.diffusion import ClassStats, class_stats, diffusion_indices
from lskd_core.eta_sets import Reference, Sets, UsageError, select_sets
from lskd_core.features_io import FeatureFile, FeaturesFileError, load_features
from lskd_core.pairwise import projected_pairwise_eta

PROG = "lskd-eta"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Diffusion index eta (Eq. 1 of Chandrasegaran et al., "
                "ICML 2022) between two penultimate-layer feature files, in percent.")
    p.add_argument("--before", required=True, help="features at T1 (.npz, see docs/formats.md)")
    p.add_argument("--after", required=True, help="features at T2 (.npz)")
    p.add_argument("--target", nargs="+", help="target class(es): index or class name; with "
                   "automatic sets defaults to every class with samples")
    p.add_argument("--similar", nargs="+", help="S1: semantically similar classes")
    p.add_argument("--dissimilar", nargs="+", help="S2: semantically dissimilar classes")
    p.add_argument("--sets", metavar="SETS.json",
                   help='{"target": {"similar": [...], "dissimilar": [...]}, ...}')
    p.add_argument("--hierarchy", metavar="PARENTS.json", help="parent map JSON (node -> parent "
                   "or [parents]); class_names name the nodes (class indices as strings if the "
                   "files have none); 'fashion-mnist' = the built-in WordNet-derived map")
    p.add_argument("--wordnet", action="store_true", help="hierarchy from WordNet 3.0; "
                   "class_names must be ImageNet wnids (n02085620)")
    p.add_argument("--wordnet-dir", help="folder with WordNet's data.noun (default "
                   "$LSKD_WORDNET_DIR or /usr/share/wordnet)")
    p.add_argument("--num-similar", type=int, default=4, help="|S1| for hierarchy sets (4)")
    p.add_argument("--num-dissimilar", type=int, default=20, help="|S2| for hierarchy sets (20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random S2 draw (0)")
    p.add_argument("--exclude-fraction", type=float, default=0.1, help="S2 avoids the subtree of "
                   "the lowest ancestor above S1's root holding this share of the classes (0.1)")
    p.add_argument("--exclude-levels", type=int, default=None, help="old rule instead: S2 avoids "
                   "the subtree this many levels above S1's root")
    p.add_argument("--feature-sets", metavar="P,Q", help="S1 = closest P %%, S2 = farthest Q %% of "
                   "classes by centroid distance in --reference (else --before) (App. G.2), e.g. 1,90")
    p.add_argument("--reference", metavar="FEATS.npz", help="features of a reference model (same "
                   "classes, any D) whose centroids rank --feature-sets and break hierarchy S1 ties")
    p.add_argument("--pairwise", action="store_true", help="also App. K's pairwise variants: mean "
                   "squared distance (closed form) and, with weight in both files, the paper's "
                   "average distance of projected features")
    p.add_argument("--pairwise-samples", type=int, default=None, metavar="N", help="at most N rows "
                   "per class (seeded by --seed) for the projected pairwise variant (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="FILE", help="write the output to FILE (atomically) instead of "
                   "stdout")
    p.add_argument("--chunk-size", type=int, default=None, help="rows per accumulation chunk")
    return p


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------

def _load(path: str, which: str) -> FeatureFile:
    try:
        return load_features(path, mmap_mode="r")
    except FileNotFoundError:
        raise UsageError(f"--{which}: features file not found: {path} (check the path)") from None
    except FeaturesFileError as exc:
        raise UsageError(f"--{which}: {exc}") from None


def _stats(ff: FeatureFile, num_classes: int, which: str, path: str,
           chunk_size: Optional[int]) -> ClassStats:
    try:
        return class_stats(ff.features, ff.labels, num_classes=num_classes, chunk_size=chunk_size)
    except ValueError as exc:
        raise UsageError(f"--{which} {path}: {exc}") from None


def _class_names(before: FeatureFile, after: FeatureFile) -> Optional[List[str]]:
    if before.class_names is not None and after.class_names is not None \
            and before.class_names != after.class_names:
        diff = next(i for i, (a, b) in enumerate(zip(before.class_names, after.class_names))
                    if a != b) if len(before.class_names) == len(after.class_names) else None
        detail = (f"{len(before.class_names)} vs {len(after.class_names)} classes" if diff is None
                  else f"class {diff} is {before.class_names[diff]!r} vs {after.class_names[diff]!r}")
        raise UsageError(f"class sets differ between --before and --after ({detail})")
    return before.class_names if before.class_names is not None else after.class_names


def _num_classes(before: FeatureFile, after: FeatureFile) -> int:
    kb, ka = before.declared_num_classes, after.declared_num_classes
    if kb is not None and ka is not None and kb != ka:
        raise UsageError(f"class sets differ: --before has {kb} classes, --after has {ka}")
    if kb is not None:
        return int(kb)
    if ka is not None:
        return int(ka)
    top = [int(f.labels.max()) for f in (before, after) if f.labels.size]
    if not top:
        raise UsageError("both feature files are empty")
    return max(top) + 1


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------

_PAIRWISE_COLUMNS = (("pairwise_sq S1 %", "eta_s1_pairwise_sq"), ("pairwise_sq S2 %", "eta_s2_pairwise_sq"),
                     ("projected S1 %", "eta_s1_pairwise_proj"), ("projected S2 %", "eta_s2_pairwise_proj"))


def _label(c: int, names: Optional[List[str]]) -> str:
    return f"{c} ({names[c]})" if names is not None else str(c)


def _ranking_line(ranked_by: Optional[str], args: argparse.Namespace) -> str:
    if ranked_by is None:
        return ""
    if ranked_by.startswith("before:"):
        return (f"sets ranked by the --before features {args.before}, the same features that are "
                f"measured; give --reference FEATS.npz to rank in a reference model (App. G.2)")
    if args.feature_sets:
        return f"sets ranked by the --reference features {args.reference}"
    return f"S1 ties broken by centroid distance in the --reference features {args.reference}"


def format_table(results: List[dict], names: Optional[List[str]], before: str, after: str,
                 pairwise: bool, ranking: str = "") -> str:
    """Readable table of eta values (percent) with the sets used."""
    head = ["target", "|S1|", "|S2|", "eta_S1 %", "eta_S2 %"]
    cols = [(h, k) for h, k in _PAIRWISE_COLUMNS if pairwise and any(k in r for r in results)]
    head += [h for h, _ in cols]
    rows = []
    for r in results:
        row = [_label(r["target"], names), str(len(r["similar"])), str(len(r["dissimilar"])),
               f"{r['eta_s1']:+.3f}", f"{r['eta_s2']:+.3f}"]
        row += [f"{r[k]:+.3f}" if k in r else "-" for _, k in cols]
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [f"diffusion index eta (Eq. 1, percent): before = {before}, after = {after}",
             "eta_S1 < 0 and eta_S2 > 0: systematic diffusion towards similar classes"]
    if cols:
        lines.append("pairwise_sq: mean squared pairwise distance of raw features (closed form); "
                     "projected: App. K's average distance of projected features")
    if ranking:
        lines.append(ranking)
    lines += ["", fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows]
    lines.append("")
    lines.append("sets:")
    for r in results:
        s1 = ", ".join(_label(c, names) for c in r["similar"])
        s2 = ", ".join(_label(c, names) for c in r["dissimilar"])
        lines.append(f"  {_label(r['target'], names)}: S1 = [{s1}]; S2 = [{s2}]")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------

def _reference(args: argparse.Namespace, num_classes: int, names: Optional[List[str]]
               ) -> Optional[Reference]:
    if not args.reference:
        return None
    ff = _load(args.reference, "reference")
    if names is not None and ff.class_names is not None and ff.class_names != names:
        raise UsageError(f"--reference {args.reference} has other class_names than --before/--after"
                         f" (rank in a model trained on the same classes)")
    k = ff.declared_num_classes
    if k is not None and k != num_classes:
        raise UsageError(f"--reference {args.reference} has {k} classes, --before/--after have "
                         f"{num_classes}")
    stats = _stats(ff, num_classes, "reference", args.reference, args.chunk_size)
    return Reference(stats, f"reference: {args.reference}")


def _projected(args: argparse.Namespace, results: List[dict], sets: Sets) -> List[str]:
    """Add App. K's projected variant to ``results`` (needs weight in both files); notes."""
    before_ff, after_ff = _load(args.before, "before"), _load(args.after, "after")
    missing = [w for w, ff in (("--before", before_ff), ("--after", after_ff)) if ff.weight is None]
    if missing:
        return [f"projected pairwise eta skipped: {' and '.join(missing)} hold no final-layer "
                f"weight (export with weight and bias to get it)"]
    for r in results:
        s1, s2 = sets[r["target"]]
        try:
            r.update(projected_pairwise_eta(before_ff, after_ff, r["target"], s1, s2,
                                            max_per_class=args.pairwise_samples, seed=args.seed))
        except ValueError as exc:
            raise UsageError(f"projected pairwise eta of target {r['target']}: {exc}") from None
    return []


_KEYS = ("target", "eta_s1", "eta_s2", "eta_s1_pairwise_sq", "eta_s2_pairwise_sq",
         "eta_s1_pairwise_proj", "eta_s2_pairwise_proj", "eta_s1_pairwise", "eta_s2_pairwise",
         "similar", "dissimilar")


def run(argv: Optional[Sequence[str]] = None) -> Tuple[dict, str, argparse.Namespace, List[str]]:
    """Parse ``argv`` and compute eta.

    Returns (JSON object, readable table, parsed args, notes for stderr). Raises UsageError
    (bad input) or OSError (a file the user named cannot be read or written).
    """
    args = build_parser().parse_args(argv)
    if args.pairwise_samples is not None and args.pairwise_samples < 1:
        raise UsageError(f"--pairwise-samples must be >= 1, got {args.pairwise_samples}")
    before_ff = _load(args.before, "before")
    after_ff = _load(args.after, "after")
    if before_ff.dim != after_ff.dim:
        raise UsageError(f"feature dimensions differ: --before has D = {before_ff.dim}, --after "
                         f"has D = {after_ff.dim}")
    names = _class_names(before_ff, after_ff)
    num_classes = _num_classes(before_ff, after_ff)
    before = _stats(before_ff, num_classes, "before", args.before, args.chunk_size)
    del before_ff  # let a memory-mapped file go before walking the second one
    after = _stats(after_ff, num_classes, "after", args.after, args.chunk_size)
    del after_ff
    ref = _reference(args, num_classes, names)
    sets, notes, ranked_by = select_sets(args, before, after, num_classes, names, ref)
    if not sets:
        raise UsageError("no target could be given sets: " + "; ".join(notes[:3]))
    notes = [f"skipped {n}" for n in notes]
    try:
        results: List[dict] = [dict(r) for r in diffusion_indices(before, after, sets,
                                                                  pairwise=args.pairwise)]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for r in results:
        r["similar"], r["dissimilar"] = sets[int(r["target"])]
    if args.pairwise:
        notes += _projected(args, results, sets)
    for r in results:
        for key in _KEYS[1:-2]:
            if key in r and not math.isfinite(r[key]):
                raise UsageError(f"eta for target {r['target']} is not finite ({key} = {r[key]})")
    rows = [{k: r[k] for k in _KEYS if k in r} for r in results]
    obj = {"results": rows, "sets_ranked_by": ranked_by}
    text = format_table(rows, names, args.before, args.after, args.pairwise,
                        _ranking_line(ranked_by, args))
    return obj, text, args, notes


_REMEDY = {errno.ENOENT: "check the path", errno.EACCES: "check the permissions",
           errno.EPERM: "check the permissions", errno.EISDIR: "give a file, not a directory",
           errno.ENOTDIR: "a component of the path is not a directory",
           errno.EROFS: "write to a writable location", errno.ENOSPC: "free some disk space",
           errno.ELOOP: "fix the symbolic link",
           errno.EEXIST: "a file stands where the path needs a directory", errno.ENAMETOOLONG: "use a shorter path"}


def _os_error_line(exc: OSError) -> str:
    """One line naming the file, the problem and what to do."""
    where = exc.filename if exc.filename is not None else ""
    what = exc.strerror or str(exc)
    remedy = _REMEDY.get(exc.errno if exc.errno is not None else -1, "check the file")
    return f"{where}: {what} ({remedy})" if where else f"{what} ({remedy})"


def _emit(text: str, out: Optional[str]) -> None:
    if out is None:
        print(text)
        return
    with atomic_open(out, "w") as fh:
        fh.write(text + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (``lskd-eta``). Exit 0 on success, 2 on bad input."""
    try:
        obj, text, args, notes = run(argv)
        _emit(json.dumps(obj) if args.json else text, args.out)
    except (UsageError, FeaturesFileError) as exc:
        msg = " ".join(str(exc).split())  # exactly one line
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lskd-eta ... | head`: the reader left; nothing to report
        try:  # no second BrokenPipeError when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (tests)
            pass
        return 1
    except OSError as exc:
        print(f"{PROG}: error: {' '.join(_os_error_line(exc).split())}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
