"""``python -m lskd_core.eta`` / ``lskd-eta``: the diffusion index eta (Eq. 1) of two feature files.

    python -m lskd_core.eta --before FEATS_T1.npz --after FEATS_T2.npz \\
        --target 3 --similar 1 2 --dissimilar 5 6 7 [--pairwise] [--json]

Sets for many targets: ``--sets SETS.json`` (``{"3": {"similar": [1, 2], "dissimilar": [5, 6]}}``),
a hierarchy (``--hierarchy PARENTS.json`` or the built-in ``--hierarchy fashion-mnist``;
``--wordnet`` when class_names are ImageNet wnids; ``--num-similar --num-dissimilar --seed``) or
feature space (``--feature-sets 1,90``: closest 1 % / farthest 90 % by the --before centroids,
App. G.2). Classes may be given as indices or as class names from the files.

``--json`` prints exactly one JSON object ``{"results": [{"target", "eta_s1", "eta_s2",
"similar", "dissimilar"[, "eta_s1_pairwise", "eta_s2_pairwise"]}, ...]}`` with eta in percent.
Bad input exits with status 2 and a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lskd_core.classsets import (FASHION_MNIST_CLASSES, ClassHierarchy, fashion_mnist_parents,
                                 feature_space_sets, load_parent_map, load_wordnet, wordnet_parents)
from lskd_core.diffusion import ClassStats, class_stats, diffusion_indices
from lskd_core.features_io import FeatureFile, load_features

PROG = "lskd-eta"
Sets = Dict[int, Tuple[List[int], List[int]]]


class UsageError(ValueError):
    """Bad command line or bad input; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
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
    p.add_argument("--exclude-levels", type=int, default=1, help="S2 avoids the subtree this many "
                   "levels above the target's S1 neighbourhood (1)")
    p.add_argument("--feature-sets", metavar="P,Q", help="S1 = closest P %%, S2 = farthest Q %% of "
                   "classes by --before centroid distance (App. G.2), e.g. 1,90")
    p.add_argument("--pairwise", action="store_true", help="also the pairwise variant (App. K)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--chunk-size", type=int, default=None, help="rows per accumulation chunk")
    return p


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------

def _load(path: str, which: str) -> FeatureFile:
    try:
        return load_features(path, mmap_mode="r")
    except FileNotFoundError:
        raise UsageError(f"--{which}: features file not found: {path}") from None


def _stats(ff: FeatureFile, num_classes: int, which: str, path: str,
           chunk_size: Optional[int]) -> ClassStats:
    try:
        return class_stats(ff.features, ff.labels, num_classes=num_classes, chunk_size=chunk_size)
    except ValueError as exc:
        raise UsageError(f"--{which} {path}: {exc}") from None


def _resolve(value: object, num_classes: int, names: Optional[List[str]], what: str) -> int:
    """Class index from an int, a numeric string or a class name."""
    text = str(value).strip()
    try:
        idx = int(text)
    except ValueError:
        if names is not None and text in names:
            return names.index(text)
        known = "" if names is None else f" (class names: {', '.join(names[:10])}" + \
            (", ..." if len(names) > 10 else "") + ")"
        raise UsageError(f"{what} {text!r} is neither a class index nor a class name{known}") \
            from None
    if not 0 <= idx < num_classes:
        raise UsageError(f"{what} {idx} is out of range: classes are 0..{num_classes - 1}")
    return idx


def _read_sets_json(path: str, num_classes: int, names: Optional[List[str]]) -> Sets:
    if not os.path.isfile(path):
        raise UsageError(f"--sets file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            raw = json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"--sets {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f'--sets {path} must be a non-empty object {{"target": {{"similar": [...], '
                         f'"dissimilar": [...]}}}}')
    sets: Sets = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict) or "similar" not in entry or "dissimilar" not in entry:
            raise UsageError(f"--sets {path}: entry {key!r} needs 'similar' and 'dissimilar' lists")
        lists = []
        for field in ("similar", "dissimilar"):
            vals = entry[field]
            if not isinstance(vals, list):
                raise UsageError(f"--sets {path}: {field} of {key!r} must be a list")
            lists.append([_resolve(v, num_classes, names, f"{field} class") for v in vals])
        target = _resolve(key, num_classes, names, "target")
        if target in sets:
            raise UsageError(f"--sets {path}: target {target} is listed twice")
        sets[target] = (lists[0], lists[1])
    return sets


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
    if kb is not None or ka is not None:
        return int(kb if kb is not None else ka)
    top = [int(f.labels.max()) for f in (before, after) if f.labels.size]
    if not top:
        raise UsageError("both feature files are empty")
    return max(top) + 1


# ----------------------------------------------------------------------------------------------
# set selection
# ----------------------------------------------------------------------------------------------

def _targets(args: argparse.Namespace, num_classes: int, names: Optional[List[str]],
             present: np.ndarray) -> Tuple[List[int], bool]:
    if args.target:
        out = [_resolve(t, num_classes, names, "target") for t in args.target]
        if len(set(out)) != len(out):
            raise UsageError("--target lists a class more than once")
        return out, True
    return [int(i) for i in np.flatnonzero(present)], False


def _hierarchy_sets(args: argparse.Namespace, num_classes: int, names: Optional[List[str]],
                    present: np.ndarray) -> Tuple[Sets, List[str]]:
    if args.wordnet:
        if names is None:
            raise UsageError("--wordnet needs class_names (ImageNet wnids such as n02085620) in "
                             "the feature files")
        wn = load_wordnet(args.wordnet_dir)
        nodes = list(names)
        parents = wordnet_parents([nodes[i] for i in np.flatnonzero(present)], wn)
    elif args.hierarchy == "fashion-mnist":
        parents = fashion_mnist_parents(load_wordnet(args.wordnet_dir))
        if names is None:
            if num_classes != len(FASHION_MNIST_CLASSES):
                raise UsageError(f"--hierarchy fashion-mnist: the files have {num_classes} classes "
                                 f"and no class_names")
            names_for_nodes = FASHION_MNIST_CLASSES
        else:
            names_for_nodes = names
        nodes = list(names_for_nodes)
    else:
        parents = load_parent_map(args.hierarchy)
        nodes = list(names) if names is not None else [str(i) for i in range(num_classes)]
    # only classes with samples in both files take part; map indices back afterwards
    keep = [int(i) for i in np.flatnonzero(present)]
    hierarchy = ClassHierarchy(parents, [nodes[i] for i in keep])
    pos = {c: j for j, c in enumerate(keep)}
    targets, explicit = _targets(args, num_classes, names, present)
    sets: Sets = {}
    skipped: List[str] = []
    for t in targets:
        if t not in pos:
            raise UsageError(f"target class {t} has no samples in --before or --after")
        try:
            s1, s2 = hierarchy.sets(pos[t], args.num_similar, args.num_dissimilar, args.seed,
                                    args.exclude_levels)
        except ValueError as exc:
            if explicit:
                raise UsageError(str(exc)) from None
            skipped.append(f"target {t}: {exc}")
            continue
        sets[t] = ([keep[j] for j in s1], [keep[j] for j in s2])
    return sets, skipped


def _feature_sets(args: argparse.Namespace, before: ClassStats, num_classes: int,
                  names: Optional[List[str]], present: np.ndarray) -> Sets:
    try:
        p, q = (float(x) for x in args.feature_sets.split(","))
    except ValueError:
        raise UsageError(f"--feature-sets must be two percentages P,Q (e.g. 1,90), got "
                         f"{args.feature_sets!r}") from None
    centroids = before.centroids
    centroids[~present] = np.nan  # classes missing from either file cannot be in a set
    targets, _ = _targets(args, num_classes, names, present)
    sets: Sets = {}
    for t in targets:
        sets[t] = feature_space_sets(centroids, t, closest_pct=p, farthest_pct=q)
    return sets


def _select_sets(args: argparse.Namespace, before: ClassStats, after: ClassStats,
                 num_classes: int, names: Optional[List[str]]) -> Tuple[Sets, List[str]]:
    modes = [m for m, on in (("--similar/--dissimilar", args.similar or args.dissimilar),
                             ("--sets", args.sets), ("--hierarchy", args.hierarchy),
                             ("--wordnet", args.wordnet), ("--feature-sets", args.feature_sets))
             if on]
    if not modes:
        raise UsageError("give the class sets: --similar and --dissimilar, --sets, --hierarchy, "
                         "--wordnet or --feature-sets")
    if len(modes) > 1:
        raise UsageError(f"choose one way to give the class sets, got {' and '.join(modes)}")
    present = (before.counts > 0) & (after.counts > 0)
    mode = modes[0]
    if mode == "--similar/--dissimilar":
        if not args.similar:
            raise UsageError("--dissimilar needs --similar (S1 is empty)")
        if not args.dissimilar:
            raise UsageError("--similar needs --dissimilar (S2 is empty)")
        if not args.target:
            raise UsageError("--similar/--dissimilar need --target")
        s1 = [_resolve(c, num_classes, names, "similar class") for c in args.similar]
        s2 = [_resolve(c, num_classes, names, "dissimilar class") for c in args.dissimilar]
        targets, _ = _targets(args, num_classes, names, present)
        return {t: (s1, s2) for t in targets}, []
    if mode == "--sets":
        if args.target:
            raise UsageError("--target is not used with --sets (targets are the file's keys)")
        return _read_sets_json(args.sets, num_classes, names), []
    if mode == "--feature-sets":
        return _feature_sets(args, before, num_classes, names, present), []
    return _hierarchy_sets(args, num_classes, names, present)


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------

def _label(c: int, names: Optional[List[str]]) -> str:
    return f"{c} ({names[c]})" if names is not None else str(c)


def format_table(results: List[dict], names: Optional[List[str]], before: str, after: str,
                 pairwise: bool) -> str:
    """Readable table of eta values (percent) with the sets used."""
    head = ["target", "|S1|", "|S2|", "eta_S1 %", "eta_S2 %"]
    if pairwise:
        head += ["pairwise S1 %", "pairwise S2 %"]
    rows = []
    for r in results:
        row = [_label(r["target"], names), str(len(r["similar"])), str(len(r["dissimilar"])),
               f"{r['eta_s1']:+.3f}", f"{r['eta_s2']:+.3f}"]
        if pairwise:
            row += [f"{r['eta_s1_pairwise']:+.3f}", f"{r['eta_s2_pairwise']:+.3f}"]
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [f"diffusion index eta (Eq. 1, percent): before = {before}, after = {after}",
             "eta_S1 < 0 and eta_S2 > 0: systematic diffusion towards similar classes", "",
             fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows]
    lines.append("")
    lines.append("sets:")
    for r in results:
        s1 = ", ".join(_label(c, names) for c in r["similar"])
        s2 = ", ".join(_label(c, names) for c in r["dissimilar"])
        lines.append(f"  {_label(r['target'], names)}: S1 = [{s1}]; S2 = [{s2}]")
    return "\n".join(lines)


def run(argv: Optional[Sequence[str]] = None) -> Tuple[dict, str, argparse.Namespace, List[str]]:
    """Parse ``argv`` and compute eta.

    Returns (JSON object, readable table, parsed args, notes on skipped targets). Raises
    UsageError / ValueError / OSError on bad input.
    """
    args = build_parser().parse_args(argv)
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
    sets, skipped = _select_sets(args, before, after, num_classes, names)
    if not sets:
        raise UsageError("no target could be given sets: " + "; ".join(skipped[:3]))
    results = diffusion_indices(before, after, sets, pairwise=args.pairwise)
    for r in results:
        r["similar"], r["dissimilar"] = sets[r["target"]]
    for r in results:
        for key in ("eta_s1", "eta_s2", "eta_s1_pairwise", "eta_s2_pairwise"):
            if key in r and not math.isfinite(r[key]):
                raise UsageError(f"eta for target {r['target']} is not finite ({key} = {r[key]})")
    obj = {"results": [
        {k: r[k] for k in ("target", "eta_s1", "eta_s2", "eta_s1_pairwise", "eta_s2_pairwise",
                           "similar", "dissimilar") if k in r}
        for r in results]}
    text = format_table(obj["results"], names, args.before, args.after, args.pairwise)
    return obj, text, args, skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (``lskd-eta``). Exit 0 on success, 2 on bad input."""
    try:
        obj, text, args, skipped = run(argv)
    except (UsageError, ValueError, OSError) as exc:
        msg = " ".join(str(exc).split())  # exactly one line
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(obj) if args.json else text)
    for note in skipped:  # targets left out of an automatic all-classes run
        print(f"{PROG}: note: skipped {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
