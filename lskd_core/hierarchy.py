"""Which class hierarchy a study or ``lskd_core.eta`` uses: the one place it is chosen.

``"fashion-mnist"`` is the built-in WordNet-derived map (App. G.1), ``"wordnet"`` takes the class
names as WordNet wnids, anything else is the path of a parent-map JSON (docs/formats.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from lskd_core import classsets

__all__ = ["HierarchyChoice", "select_hierarchy"]


@dataclass
class HierarchyChoice:
    parents: Dict[str, List[str]]  # node -> parents, covering every ancestor of the nodes
    nodes: List[str]  # the hierarchy node of each class index
    source: str  # one line for the report


def select_hierarchy(hierarchy: str, names: Optional[Sequence[str]], num_classes: int,
                     wordnet: Optional[classsets.WordNetNouns] = None,
                     present: Optional[Sequence[int]] = None) -> HierarchyChoice:
    """The parent map and class nodes for ``hierarchy``; ValueError naming the problem.

    ``names``: the class names of the models (None when the files have none). ``wordnet``: an
    already loaded WordNet (default: the standard location). ``present``: the class indices taking
    part (WordNet parents are built for these only; default all).
    """
    keep = list(range(num_classes)) if present is None else [int(i) for i in present]
    if hierarchy == "wordnet":
        if names is None:
            raise ValueError("the wordnet hierarchy needs class_names (ImageNet wnids such as n02085620) "
                             "in the feature files")
        nodes = list(names)
        parents = classsets.wordnet_parents([nodes[i] for i in keep], wordnet)
        source = "WordNet hypernyms of the class wnids"
    elif hierarchy == "fashion-mnist":
        parents = classsets.fashion_mnist_parents(wordnet)
        if names is None and num_classes != len(classsets.FASHION_MNIST_CLASSES):
            raise ValueError(f"hierarchy fashion-mnist: the models have {num_classes} classes and no class_names")
        nodes = list(names) if names is not None else list(classsets.FASHION_MNIST_CLASSES)
        source = "WordNet-derived Fashion-MNIST hierarchy (lskd_core.classsets.fashion_mnist_parents)"
    else:
        parents = classsets.load_parent_map(hierarchy)
        nodes = list(names) if names is not None else [str(i) for i in range(num_classes)]
        source = f"parent map {hierarchy}"
    if len(nodes) != num_classes:
        raise ValueError(f"hierarchy {hierarchy!r} has {len(nodes)} classes but the models have {num_classes}")
    return HierarchyChoice(parents, nodes, source)
