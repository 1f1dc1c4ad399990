"""Choosing S1 (semantically similar) and S2 (dissimilar) classes for the diffusion index (App. G).

Three sources:

* explicit ids (validated by :func:`lskd_core.diffusion.check_class_sets`);
* a hierarchy (App. G.1): WordNet 3.0 read offline from the Debian ``wordnet-base`` database for
  ImageNet wnids, or any parent map in JSON (CUB bird families, Fashion-MNIST groups);
* feature space (App. G.2): the closest p % and farthest q % of classes by centroid distance;

and the agreement of two selections, |S_ref ∩ S_other| / |S_ref| (Table G.1).

Hierarchy rule (:func:`hierarchy_sets`). The hierarchy is a DAG of ``node -> [parents]``
(WordNet has a few synsets with two hypernyms). The tree distance between classes a and b is the
length of the shortest path through a common ancestor, ``min_c up(a, c) + up(b, c)`` where
``up(x, c)`` counts hypernym edges from x up to c (WordNet's path similarity).

* S1 = the ``num_similar`` classes nearest to the target in tree distance. Classes tied at the
  cut (thunder snake has 8 colubrid siblings at distance 2 and k = 4) are ranked by
  ``tie_distances`` when given (e.g. squared centroid distances to the target in a reference
  model's features, as App. G.2 uses the teacher), nearest first; remaining ties, or all of them
  without ``tie_distances``, by a seeded hash of the class NAMES (``sha256(seed, target node,
  class node)``). No rule looks at class indices, so reordering the classes never changes the sets.
* The target's *neighbourhood root* r is the common ancestor of the target and all of S1 that is
  nearest to the target (for Chihuahua with k = 4: ``toy_dog``).
* S2 = ``num_dissimilar`` classes outside the subtree of the *exclusion root*, chosen by the same
  kind of name-keyed seeded hash (a uniform random draw whose outcome depends on names only).
  App. G does not spell the G.1 exclusion out; it checks G.1's S2 against G.2's "distant 90 %" and
  finds 94 % agreement, i.e. S2 avoids roughly the target's nearest 10 % of classes. The
  hierarchy analogue we use: the exclusion root is the lowest proper ancestor of r whose subtree
  holds at least ``exclude_fraction`` (default 0.1) of all classes (so never less than the old
  rule, r's parent; in small hierarchies such as CUB's 9-bird example it is exactly r's parent). On ImageNet that is
  ``dog`` for every breed (118 classes), so no dog can be "dissimilar" to a retriever, where the
  old rule (one level above r: ``sporting_dog``) let hounds and terriers in; for thunder snake it
  is the lowest ancestor above ``snake`` holding 100 classes. ``exclude_levels=n`` keeps the old
  rule (n levels above r). If fewer than ``num_dissimilar`` classes lie outside, the exclusion
  root is lowered one ancestor at a time down to r itself (small hierarchies such as
  Fashion-MNIST); if even r's subtree leaves too few, ValueError.

Fashion-MNIST (:func:`fashion_mnist_parents`): each class is mapped to a WordNet synset
(``lskd_core/data/fashion_mnist_wordnet.json``) and the parent map is built from WordNet's
hypernym paths. Raw WordNet puts trouser under ``garment`` together with shirt, sweater and coat,
and dress under ``woman's_clothing``, so no cut of the hypernym tree separates upper-body garments
from the rest. We therefore split WordNet's ``clothing`` subtree by the body region that WordNet's
own glosses state: a class is *upper-body* when the gloss of its synset or of a hypernym below
``clothing`` mentions the upper body (``upper``, ``shoulder``, ``sleeve``, ``chest``, ``torso``):
shirt ("worn on the upper half of the body"), sweater ("covering the upper part of the body"),
coat ("has sleeves and covers the body from shoulder down"). Region nodes
``n03051540/upper_body`` and ``n03051540/other`` are inserted directly below ``clothing``, and
hypernyms between a class and ``clothing`` that would mix regions (``garment``) are dropped.
``body_regions=False`` returns the raw hypernym map.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from importlib import resources
from typing import Any, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np

from lskd_core.fashion_mnist import FASHION_MNIST_CLASSES
from lskd_core.jsonio import load_json_file
from lskd_core.wordnet import (
    DEFAULT_WORDNET_DIR,
    WordNetNouns,
    load_wordnet,
    up_distances,
    wnid_to_offset,
    wordnet_parents,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "WordNetNouns",
    "load_wordnet",
    "wnid_to_offset",
    "wordnet_parents",
    "load_parent_map",
    "ClassHierarchy",
    "hierarchy_sets",
    "feature_space_sets",
    "set_agreement",
    "fashion_mnist_wnids",
    "fashion_mnist_parents",
    "DEFAULT_WORDNET_DIR",
]



Node = Hashable
# Any, not Node: Mapping is invariant in its key, and callers pass Dict[str, List[str]]
ParentMap = Mapping[Any, Sequence[Any]]


def load_parent_map(json_path: "os.PathLike[str] | str") -> Dict[str, List[str]]:
    """Read a JSON parent map ``{"node": "parent"}`` or ``{"node": ["parent", ...]}``.

    ``null`` or ``[]`` marks a root. ValueError for malformed JSON or a cycle.
    """
    path = os.fspath(json_path)
    raw = load_json_file(path, "parent map", '{"node": "parent"}', missing=FileNotFoundError)
    if not isinstance(raw, dict):
        raise ValueError(f"parent map {path} must be a JSON object node -> parent(s)")
    out: Dict[str, List[str]] = {}
    for node, par in raw.items():
        if par is None:
            par = []
        elif isinstance(par, str):
            par = [par]
        if not isinstance(par, list) or not all(isinstance(p, str) for p in par):
            raise ValueError(f"parent map {path}: parents of {node!r} must be a string or a list of "
                             f"strings, got {par!r}")
        out[str(node)] = list(par)
    _check_acyclic(out, where=f"parent map {path}")
    return out


def _check_acyclic(parents: ParentMap, where: str = "parent map") -> None:
    state: Dict[Node, int] = {}  # 1 = on the stack, 2 = done
    for start in parents:
        if state.get(start):
            continue
        stack = [(start, iter(parents.get(start, ())))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise ValueError(f"{where} has a cycle through {nxt!r}")
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(parents.get(nxt, ()))))


# ----------------------------------------------------------------------------------------------
# hierarchy sets (App. G.1)
# ----------------------------------------------------------------------------------------------

class ClassHierarchy:
    """Tree distances between classes placed on the nodes of a parent map (DAG).

    Build once and call :meth:`sets` for many targets: distances from one class to all others cost
    one vectorised update per ancestor of that class.
    """

    def __init__(self, parents: ParentMap, class_nodes: Sequence[Node]):
        self.parents = parents
        self.class_nodes = list(class_nodes)
        if not self.class_nodes:
            raise ValueError("class_nodes must not be empty")
        seen: Dict[Node, int] = {}
        for i, node in enumerate(self.class_nodes):
            if node in seen:
                raise ValueError(f"classes {seen[node]} and {i} map to the same hierarchy node "
                                 f"{node!r}")
            seen[node] = i
        known = set(parents)
        for ps in parents.values():
            known.update(ps)
        missing = [(i, n) for i, n in enumerate(self.class_nodes) if n not in known]
        if missing:
            i, n = missing[0]
            raise ValueError(f"class {i} (node {n!r}) is not in the hierarchy"
                             + (f" ({len(missing)} classes missing)" if len(missing) > 1 else ""))
        _check_acyclic(parents)
        self.up = [up_distances(parents, n) for n in self.class_nodes]
        # inverted index: ancestor -> (class indices, their up-distances)
        members: Dict[Node, Tuple[List[int], List[int]]] = {}
        for i, up in enumerate(self.up):
            for a, d in up.items():
                idx, dist = members.setdefault(a, ([], []))
                idx.append(i)
                dist.append(d)
        self.members = {a: (np.asarray(i, dtype=np.intp), np.asarray(d, dtype=np.int64))
                        for a, (i, d) in members.items()}

    @property
    def num_classes(self) -> int:
        return len(self.class_nodes)

    def distances_from(self, index: int) -> np.ndarray:
        """[K] tree distances from class ``index`` (inf where no common ancestor)."""
        dist = np.full(self.num_classes, np.inf)
        for a, da in self.up[index].items():
            idx, d = self.members[a]
            dist[idx] = np.minimum(dist[idx], da + d)
        return dist

    def neighbourhood_root(self, target: int, similar: Sequence[int]) -> Node:
        """Common ancestor of the target and all of ``similar`` nearest to the target."""
        common = set(self.up[target])
        for c in similar:
            common &= set(self.up[c])
        if not common:
            raise ValueError(f"'{self.class_nodes[target]}' and its similar classes share no "
                             f"ancestor")
        return min(common, key=lambda a: (self.up[target][a], str(a)))

    def _ancestors_at(self, node: Node, levels: int) -> Set[Node]:
        """Ancestors exactly ``levels`` edges above ``node`` (a root reached earlier counts)."""
        frontier = {node}
        for _ in range(levels):
            nxt: Set[Node] = set()
            for n in frontier:
                ps = self.parents.get(n, ())
                nxt.update(ps if ps else (n,))
            frontier = nxt
        return frontier

    def inside(self, roots: Iterable[Node]) -> np.ndarray:
        """[K] bool: classes in the subtree of any of ``roots``."""
        mask = np.zeros(self.num_classes, dtype=bool)
        for r in roots:
            if r in self.members:
                mask[self.members[r][0]] = True
        return mask

    def sets(self, target: int, num_similar: int = 4, num_dissimilar: int = 20, seed: int = 0,
             exclude_levels: Optional[int] = None, exclude_fraction: float = 0.1,
             tie_distances: Optional[Union[Sequence[float], np.ndarray]] = None) -> Tuple[List[int], List[int]]:
        """(S1, S2) for ``target`` by the rule in the module docstring (S1 nearest first, S2 sorted).

        ``tie_distances`` [K]: ranks classes tied in tree distance (smaller first; NaN = unknown,
        last). ``exclude_levels``: the old fixed rule (n levels above r) instead of
        ``exclude_fraction``.
        """
        k = self.num_classes
        if not 0 <= int(target) < k:
            raise ValueError(f"target {target} is not a class index in 0..{k - 1}")
        target = int(target)
        if int(num_similar) < 1:
            raise ValueError(f"num_similar must be >= 1, got {num_similar}")
        if int(num_dissimilar) < 1:
            raise ValueError(f"num_dissimilar must be >= 1, got {num_dissimilar}")
        if exclude_levels is not None and int(exclude_levels) < 0:
            raise ValueError(f"exclude_levels must be >= 0, got {exclude_levels}")
        if not 0.0 <= float(exclude_fraction) <= 1.0:
            raise ValueError(f"exclude_fraction must be in [0, 1], got {exclude_fraction}")
        s1 = self._similar(target, int(num_similar), seed, tie_distances)
        root = self.neighbourhood_root(target, s1)
        candidates: np.ndarray = np.zeros(0, dtype=np.intp)
        for excl in self._exclusion_roots(root, exclude_levels, float(exclude_fraction)):
            excluded = self.inside(excl)
            excluded[target] = True
            excluded[s1] = True
            candidates = np.flatnonzero(~excluded)
            if len(candidates) >= num_dissimilar:
                break
        else:
            raise ValueError(
                f"num_dissimilar={num_dissimilar} but only {len(candidates)} class(es) lie outside "
                f"the subtree of '{root}' (the neighbourhood of '{self.class_nodes[target]}')")
        ranked = sorted((int(c) for c in candidates),
                        key=lambda c: self._name_key(seed, "S2", target, c))
        return s1, sorted(ranked[:int(num_dissimilar)])

    def _name_key(self, seed: int, purpose: str, target: int, c: int) -> bytes:
        """A seeded pseudo-random rank of class ``c`` that depends on names only, never indices."""
        text = f"{int(seed)}\0{purpose}\0{self.class_nodes[target]}\0{self.class_nodes[c]}"
        return hashlib.sha256(text.encode("utf-8")).digest()

    def _similar(self, target: int, num_similar: int, seed: int,
                 tie_distances: Optional[Union[Sequence[float], np.ndarray]]) -> List[int]:
        dist = self.distances_from(target)
        others = [c for c in range(self.num_classes) if c != target and math.isfinite(dist[c])]
        if len(others) < num_similar:
            raise ValueError(f"num_similar={num_similar} but only {len(others)} other classes are "
                             f"connected to '{self.class_nodes[target]}' in the hierarchy")
        ref = None
        if tie_distances is not None:
            ref = np.asarray(tie_distances, dtype=np.float64)
            if ref.shape != (self.num_classes,):
                raise ValueError(f"tie_distances must have one entry per class "
                                 f"({self.num_classes}), got shape {ref.shape}")
            ref = np.where(np.isnan(ref), np.inf, ref)
        others.sort(key=lambda c: (dist[c], 0.0 if ref is None else float(ref[c]),
                                   self._name_key(seed, "S1", target, c)))
        return others[:num_similar]

    def _exclusion_roots(self, root: Node, exclude_levels: Optional[int],
                         exclude_fraction: float) -> List[Set[Node]]:
        """Exclusion subtrees to try, widest first, ending with r's own subtree."""
        if exclude_levels is not None:
            return [self._ancestors_at(root, levels) for levels in range(int(exclude_levels), -1, -1)]
        up = up_distances(self.parents, root)
        chain = sorted(up, key=lambda a: (up[a], str(a)))  # r, its parents, grandparents, ...
        need = math.ceil(exclude_fraction * self.num_classes)
        top = len(chain) - 1
        for i, a in enumerate(chain):
            if up[a] >= 1 and len(self.members[a][0]) >= need:
                top = i
                break
        return [{a} for a in reversed(chain[:top + 1])]


def hierarchy_sets(parents: ParentMap, class_nodes: Sequence[Node], target_index: int,
                   num_similar: int = 4, num_dissimilar: int = 20, seed: int = 0,
                   exclude_levels: Optional[int] = None, exclude_fraction: float = 0.1,
                   tie_distances: Optional[Union[Sequence[float], np.ndarray]] = None) -> Tuple[List[int], List[int]]:
    """S1 / S2 (indices into ``class_nodes``) from a hierarchy (App. G.1; rule in the module doc).

    The paper uses k = 4 similar and 20 dissimilar classes. For many targets build one
    :class:`ClassHierarchy` and call its ``sets``.
    """
    return ClassHierarchy(parents, class_nodes).sets(target_index, num_similar, num_dissimilar,
                                                     seed, exclude_levels, exclude_fraction,
                                                     tie_distances)


# ----------------------------------------------------------------------------------------------
# feature-space sets (App. G.2) and agreement (Table G.1)
# ----------------------------------------------------------------------------------------------

def feature_space_sets(centroids: np.ndarray, target: int, closest_pct: float = 1.0,
                       farthest_pct: float = 90.0) -> Tuple[List[int], List[int]]:
    """App. G.2: S1 = closest ``closest_pct`` %, S2 = farthest ``farthest_pct`` % of the other classes.

    Counts are ``ceil(pct / 100 * (K' ))`` with K' the other classes that have a centroid (rows with
    NaN, i.e. no samples, are skipped): ImageNet's 999 others give 10 and 900 as in App. G.2. At
    least one class each; if rounding up makes the two sets meet, S2 gives way. Distances are
    squared Euclidean between centroids; ties go to the lower class index.
    """
    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"centroids must be [K, D], got shape {c.shape}")
    k = c.shape[0]
    if not 0 <= int(target) < k:
        raise ValueError(f"target {target} is not a class index in 0..{k - 1}")
    target = int(target)
    for name, pct in (("closest_pct", closest_pct), ("farthest_pct", farthest_pct)):
        if not (isinstance(pct, (int, float)) and 0 < pct <= 100):
            raise ValueError(f"{name} must be in (0, 100], got {pct!r}")
    if closest_pct + farthest_pct > 100:
        raise ValueError(f"closest_pct + farthest_pct must be <= 100, got "
                         f"{closest_pct} + {farthest_pct}")
    if not np.isfinite(c[target]).all():
        raise ValueError(f"target class {target} has no centroid (no samples)")
    valid = np.array(np.isfinite(c).all(axis=1), dtype=bool)
    valid[target] = False
    others = np.flatnonzero(valid)
    if len(others) < 2:
        raise ValueError(f"need at least 2 other classes with samples, got {len(others)}")
    diff = c[others] - c[target]
    dist = np.einsum("kd,kd->k", diff, diff)
    order = others[np.lexsort((others, dist))]  # by distance, then index
    n = len(others)
    n1 = max(1, math.ceil(closest_pct / 100.0 * n - 1e-9))
    n2 = max(1, math.ceil(farthest_pct / 100.0 * n - 1e-9))
    n1 = min(n1, n - 1)
    n2 = min(n2, n - n1)
    s1 = sorted(int(x) for x in order[:n1])
    s2 = sorted(int(x) for x in order[n - n2:])
    return s1, s2


def set_agreement(reference: Iterable[int], other: Iterable[int]) -> float:
    """Table G.1: |reference ∩ other| / |reference| (1.0 = every reference class was also chosen)."""
    ref = set(int(x) for x in reference)
    if not ref:
        raise ValueError("reference set must not be empty")
    return len(ref & set(int(x) for x in other)) / len(ref)


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST from WordNet
# ----------------------------------------------------------------------------------------------

_CLOTHING = "n03051540"
_UPPER_BODY_CUES = re.compile(r"\b(upper|shoulders?|sleeves?|chest|torso)\b", re.IGNORECASE)


def fashion_mnist_wnids() -> Dict[str, str]:
    """Fashion-MNIST class name -> WordNet 3.0 noun synset.

    Read from ``lskd_core/data/fashion_mnist_wordnet.json``.
    """
    data = resources.files("lskd_core").joinpath("data")
    text = data.joinpath("fashion_mnist_wordnet.json").read_text(encoding="utf-8")
    mapping = json.loads(text)["synsets"]
    if sorted(mapping) != sorted(FASHION_MNIST_CLASSES):
        raise ValueError("fashion_mnist_wordnet.json does not list exactly the Fashion-MNIST classes")
    return {name: mapping[name] for name in FASHION_MNIST_CLASSES}


def _upper_body(wn: WordNetNouns, chain: Sequence[str]) -> bool:
    return any(_UPPER_BODY_CUES.search(wn.gloss(s)) for s in chain)


def fashion_mnist_parents(wordnet: Optional[WordNetNouns] = None,
                          body_regions: bool = True) -> Dict[str, List[str]]:
    """WordNet-derived parent map for the 10 Fashion-MNIST classes (keys include the class names).

    Each class name is a leaf under its synset; synsets link to their WordNet hypernyms. With
    ``body_regions`` (default) WordNet's ``clothing`` subtree is split by the body region stated in
    the glosses (module docstring), which yields the groups upper-body garments (T-shirt/top,
    Pullover, Coat, Shirt), other garments (Trouser, Dress), footwear (Sandal, Sneaker, Ankle
    boot) and bag.
    """
    wn = wordnet if wordnet is not None else load_wordnet()
    wnids = fashion_mnist_wnids()
    raw = wordnet_parents(wnids.values(), wn)
    parents: Dict[str, List[str]] = {name: [wnids[name]] for name in FASHION_MNIST_CLASSES}
    if not body_regions:
        parents.update(raw)
        return parents

    # region of each class under `clothing` (classes outside it keep their raw paths)
    region: Dict[str, str] = {}
    chains: Dict[str, List[str]] = {}
    for name, w in wnids.items():
        up = up_distances(raw, w)
        if _CLOTHING not in up:
            continue
        # the synsets from the class up to (not including) clothing along a shortest path
        chain = [w]
        while chain[-1] != _CLOTHING:
            nxt = min((p for p in raw[chain[-1]] if _CLOTHING in up_distances(raw, p)),
                      key=lambda p: (up_distances(raw, p)[_CLOTHING], p))
            chain.append(nxt)
        chains[name] = chain[:-1]
        region[name] = "upper_body" if _upper_body(wn, chain[:-1]) else "other"

    # a synset below clothing is kept only if all classes under it share a region
    node_regions: Dict[str, Set[str]] = {}
    for name, chain in chains.items():
        for s in chain:
            node_regions.setdefault(s, set()).add(region[name])
    for name, chain in chains.items():
        kept = [s for s in chain if len(node_regions[s]) == 1]
        region_node = f"{_CLOTHING}/{region[name]}"
        for child, parent in zip(kept, kept[1:] + [region_node]):
            parents.setdefault(child, [])
            if parent not in parents[child]:
                parents[child].append(parent)
        parents[region_node] = [_CLOTHING]
    for node, ps in raw.items():
        in_clothing_subtree = node in node_regions
        if not in_clothing_subtree and node not in parents:
            parents[node] = list(ps)
    return {k: parents[k] for k in sorted(parents, key=str)}
