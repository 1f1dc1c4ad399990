"""WordNet 3.0 nouns read offline from the Debian ``wordnet-base`` database (no NLTK).

ImageNet wnids are WordNet 3.0 noun offsets (``n02085620`` = Chihuahua). :func:`load_wordnet`
parses ``data.noun`` once per file (cached), following ``@`` and ``@i`` (instance) hypernyms;
:func:`wordnet_parents` builds the parent map the class hierarchy of App. G.1 needs
(:mod:`lskd_core.classsets`, which re-exports everything here).
"""

from __future__ import annotations

import functools
import os
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["DEFAULT_WORDNET_DIR", "WordNetNouns", "load_wordnet", "wnid_to_offset", "wordnet_parents",
           "up_distances"]

# Location of the Debian wordnet-base package's database (override: $LSKD_WORDNET_DIR).
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"

_WNID = re.compile(r"^n(\d{8})$")


# ----------------------------------------------------------------------------------------------
# WordNet (data.noun) without NLTK
# ----------------------------------------------------------------------------------------------

def wnid_to_offset(wnid: str) -> int:
    """``'n02085620'`` -> 2085620 (ImageNet wnids are WordNet 3.0 noun offsets)."""
    m = _WNID.match(str(wnid))
    if not m:
        raise ValueError(f"not a WordNet noun id (expected 'n' + 8 digits, e.g. n02085620): "
                         f"{wnid!r}")
    return int(m.group(1))


def _offset_to_wnid(offset: Union[int, str]) -> str:
    return f"n{int(offset):08d}"


@dataclass(frozen=True)
class WordNetNouns:
    """The noun synsets of WordNet 3.0: wnid -> lemmas, hypernyms (``@`` and ``@i``) and gloss."""

    lemmas: Mapping[str, Tuple[str, ...]]
    hypernym_map: Mapping[str, Tuple[str, ...]]
    glosses: Mapping[str, str]
    source: str

    def __contains__(self, wnid: object) -> bool:
        return wnid in self.hypernym_map

    def __len__(self) -> int:
        return len(self.hypernym_map)

    def _check(self, wnid: str) -> str:
        wnid_to_offset(wnid)
        if wnid not in self.hypernym_map:
            raise ValueError(f"{wnid} is not a noun synset in {self.source}")
        return wnid

    def hypernyms(self, wnid: str) -> Tuple[str, ...]:
        return self.hypernym_map[self._check(wnid)]

    def name(self, wnid: str) -> str:
        """First lemma, e.g. ``'Chihuahua'`` for n02085620."""
        return self.lemmas[self._check(wnid)][0]

    def gloss(self, wnid: str) -> str:
        return self.glosses[self._check(wnid)]

    def ancestors(self, wnid: str) -> Dict[str, int]:
        """All hypernym ancestors (and the synset itself at 0) with their shortest up-distance."""
        return up_distances(self.hypernym_map, self._check(wnid))


def _parse_data_noun(path: str) -> WordNetNouns:
    lemmas: Dict[str, Tuple[str, ...]] = {}
    hyper: Dict[str, Tuple[str, ...]] = {}
    glosses: Dict[str, str] = {}
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  "):  # license header
                continue
            data, _, gloss = line.partition(" | ")
            f = data.split()
            try:
                # offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [ptr off pos st]...
                wnid = _offset_to_wnid(f[0])
                n_words = int(f[3], 16)
                words = tuple(f[4 + 2 * i] for i in range(n_words))
                i = 4 + 2 * n_words
                n_ptrs = int(f[i])
                i += 1
                parents = []
                for _ in range(n_ptrs):
                    symbol, target, pos = f[i], f[i + 1], f[i + 2]
                    if symbol in ("@", "@i") and pos == "n":
                        parents.append(_offset_to_wnid(target))
                    i += 4
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{lineno}: not a WordNet data.noun line") from None
            lemmas[wnid] = words
            hyper[wnid] = tuple(parents)
            glosses[wnid] = gloss.strip()
    if not hyper:
        raise ValueError(f"{path} holds no noun synsets")
    return WordNetNouns(lemmas=lemmas, hypernym_map=hyper, glosses=glosses, source=path)


@functools.lru_cache(maxsize=4)
def _load_wordnet_cached(path: str, mtime: float) -> WordNetNouns:
    return _parse_data_noun(path)


def load_wordnet(wordnet_dir: Optional[str] = None) -> WordNetNouns:
    """Parse WordNet 3.0's ``data.noun`` (Debian ``wordnet-base``), following ``@``/``@i`` hypernyms.

    Directory: ``wordnet_dir``, else ``$LSKD_WORDNET_DIR``, else ``/usr/share/wordnet``. Cached per
    file. FileNotFoundError (saying how to install it) when the database is missing.
    """
    folder = wordnet_dir or os.environ.get("LSKD_WORDNET_DIR") or DEFAULT_WORDNET_DIR
    path = os.path.join(os.fspath(folder), "data.noun")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"WordNet noun database not found at {path}: install the Debian package wordnet-base "
            f"(sudo apt-get install wordnet-base) or point $LSKD_WORDNET_DIR at a folder holding "
            f"WordNet 3.0's data.noun")
    return _load_wordnet_cached(os.path.abspath(path), os.path.getmtime(path))


def wordnet_parents(wnids: Iterable[str],
                    wordnet: Optional[WordNetNouns] = None) -> Dict[str, List[str]]:
    """Parent map (node -> hypernyms) covering every ancestor of ``wnids`` (for hierarchy_sets)."""
    wn = wordnet if wordnet is not None else load_wordnet()
    parents: Dict[str, List[str]] = {}
    todo: Deque[str] = deque()
    for w in wnids:
        wn.hypernyms(w)  # validates
        todo.append(w)
    while todo:
        node = todo.popleft()
        if node in parents:
            continue
        parents[node] = list(wn.hypernyms(node))
        todo.extend(p for p in parents[node] if p not in parents)
    return parents


def up_distances(parents: Mapping[Any, Sequence[Any]], node: Any) -> Dict[Any, int]:
    """Shortest number of parent edges from ``node`` to each of its ancestors (itself at 0)."""
    dist = {node: 0}
    todo = deque([node])
    while todo:
        cur = todo.popleft()
        for p in parents.get(cur, ()):
            if p not in dist:
                dist[p] = dist[cur] + 1
                todo.append(p)
    return dist
