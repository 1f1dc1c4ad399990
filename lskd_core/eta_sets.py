"""Class sets (S1, S2) for the eta CLI: explicit, a sets JSON, a hierarchy or feature space.

Split out of :mod:`lskd_core.eta` (which parses, loads and prints). Every bad input raises
:class:`UsageError`, which the CLI prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Tuple

import numpy as np

from lskd_core.classsets import ClassHierarchy, feature_space_sets, load_wordnet
from lskd_core.diffusion import ClassStats
from lskd_core.hierarchy import select_hierarchy
from lskd_core.jsonio import load_json_file

__all__ = ["Sets", "UsageError", "Reference", "resolve_class", "select_sets"]

Sets = Dict[int, Tuple[List[int], List[int]]]


class UsageError(ValueError):
    """Bad command line or bad input; reported as one line, exit status 2."""


def resolve_class(value: object, num_classes: int, names: Optional[List[str]], what: str) -> int:
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
    raw = load_json_file(path, "--sets file", '{"target": {"similar": [...], "dissimilar": [...]}}', UsageError)
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
            lists.append([resolve_class(v, num_classes, names, f"{field} class") for v in vals])
        target = resolve_class(key, num_classes, names, "target")
        if target in sets:
            raise UsageError(f"--sets {path}: target {target} is listed twice")
        sets[target] = (lists[0], lists[1])
    return sets


def _targets(args: argparse.Namespace, num_classes: int, names: Optional[List[str]],
             present: np.ndarray) -> Tuple[List[int], bool]:
    if args.target:
        out = [resolve_class(t, num_classes, names, "target") for t in args.target]
        if len(set(out)) != len(out):
            raise UsageError("--target lists a class more than once")
        return out, True
    return [int(i) for i in np.flatnonzero(present)], False


class Reference:
    """Centroids of the model that ranks classes (``--reference``, else ``--before``)."""

    def __init__(self, stats: ClassStats, label: Optional[str]):
        self.centroids = stats.centroids
        self.label = label  # "reference: PATH" / "before: PATH"; None for the tie-break-only case

    def distances_from(self, target: int) -> np.ndarray:
        diff = self.centroids - self.centroids[target]
        return np.einsum("kd,kd->k", diff, diff)


def _hierarchy_parents(args: argparse.Namespace, num_classes: int, names: Optional[List[str]],
                       present: np.ndarray) -> Tuple[Dict[str, List[str]], List[str]]:
    """(parent map, hierarchy node of every class index), chosen as the study's report chooses."""
    hierarchy = "wordnet" if args.wordnet else args.hierarchy
    needs_wordnet = hierarchy in ("wordnet", "fashion-mnist")
    wordnet = load_wordnet(args.wordnet_dir) if needs_wordnet else None
    choice = select_hierarchy(hierarchy, names, num_classes, wordnet, present=[int(i) for i in np.flatnonzero(present)])
    return choice.parents, choice.nodes


def _hierarchy_sets(args: argparse.Namespace, num_classes: int, names: Optional[List[str]],
                    present: np.ndarray, ref: Optional[Reference]) -> Tuple[Sets, List[str]]:
    try:
        parents, nodes = _hierarchy_parents(args, num_classes, names, present)
        # only classes with samples in both files take part; map indices back afterwards
        keep = [int(i) for i in np.flatnonzero(present)]
        hierarchy = ClassHierarchy(parents, [nodes[i] for i in keep])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    pos = {c: j for j, c in enumerate(keep)}
    targets, explicit = _targets(args, num_classes, names, present)
    sets: Sets = {}
    skipped: List[str] = []
    for t in targets:
        if t not in pos:
            raise UsageError(f"target class {t} has no samples in --before or --after")
        ties = None if ref is None else ref.distances_from(t)[keep]
        try:
            s1, s2 = hierarchy.sets(pos[t], args.num_similar, args.num_dissimilar, args.seed,
                                    args.exclude_levels, args.exclude_fraction, tie_distances=ties)
        except ValueError as exc:
            if explicit:
                raise UsageError(str(exc)) from None
            skipped.append(f"target {t}: {exc}")
            continue
        sets[t] = ([keep[j] for j in s1], [keep[j] for j in s2])
    return sets, skipped


def _feature_sets(args: argparse.Namespace, ref: Reference, num_classes: int,
                  names: Optional[List[str]], present: np.ndarray) -> Sets:
    try:
        p, q = (float(x) for x in args.feature_sets.split(","))
    except ValueError:
        raise UsageError(f"--feature-sets must be two percentages P,Q (e.g. 1,90), got "
                         f"{args.feature_sets!r}") from None
    centroids = ref.centroids.copy()
    centroids[~present] = np.nan  # classes missing from either file cannot be in a set
    targets, _ = _targets(args, num_classes, names, present)
    sets: Sets = {}
    for t in targets:
        try:
            sets[t] = feature_space_sets(centroids, t, closest_pct=p, farthest_pct=q)
        except ValueError as exc:
            raise UsageError(f"--feature-sets: {exc} (in {ref.label})") from None
    return sets


def _explicit_sets(args: argparse.Namespace, num_classes: int, names: Optional[List[str]],
                   present: np.ndarray) -> Sets:
    if not args.similar:
        raise UsageError("--dissimilar needs --similar (S1 is empty)")
    if not args.dissimilar:
        raise UsageError("--similar needs --dissimilar (S2 is empty)")
    if not args.target:
        raise UsageError("--similar/--dissimilar need --target")
    s1 = [resolve_class(c, num_classes, names, "similar class") for c in args.similar]
    s2 = [resolve_class(c, num_classes, names, "dissimilar class") for c in args.dissimilar]
    targets, _ = _targets(args, num_classes, names, present)
    return {t: (s1, s2) for t in targets}


def select_sets(args: argparse.Namespace, before: ClassStats, after: ClassStats,
                 num_classes: int, names: Optional[List[str]],
                 ref: Optional[Reference]) -> Tuple[Sets, List[str], Optional[str]]:
    """(sets, notes on skipped targets, which features ranked the sets or None)."""
    modes = [m for m, on in (("--similar/--dissimilar", args.similar or args.dissimilar),
                             ("--sets", args.sets), ("--hierarchy", args.hierarchy),
                             ("--wordnet", args.wordnet), ("--feature-sets", args.feature_sets))
             if on]
    if not modes:
        raise UsageError("give the class sets: --similar and --dissimilar, --sets, --hierarchy, "
                         "--wordnet or --feature-sets")
    if len(modes) > 1:
        raise UsageError(f"choose one way to give the class sets, got {' and '.join(modes)}")
    mode = modes[0]
    if ref is not None and mode in ("--similar/--dissimilar", "--sets"):
        raise UsageError(f"--reference ranks automatic sets; it has no use with {mode}")
    present = (before.counts > 0) & (after.counts > 0)
    if mode == "--similar/--dissimilar":
        return _explicit_sets(args, num_classes, names, present), [], None
    if mode == "--sets":
        if args.target:
            raise UsageError("--target is not used with --sets (targets are the file's keys)")
        return _read_sets_json(args.sets, num_classes, names), [], None
    if mode == "--feature-sets":
        ranker = ref if ref is not None else Reference(before, f"before: {args.before}")
        return _feature_sets(args, ranker, num_classes, names, present), [], ranker.label
    sets, skipped = _hierarchy_sets(args, num_classes, names, present, ref)
    return sets, skipped, None if ref is None else ref.label
