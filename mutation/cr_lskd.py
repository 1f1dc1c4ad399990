"""cosmic-ray with two more operators (issue 20): removed calls and swapped arguments.

cosmic-ray 8 has no operator that deletes a call or swaps a call's arguments, the two bugs issue 20
asks for besides comparison, boolean and constant changes. This wrapper adds them as the operator
provider ``lskd`` (``lskd/RemoveCall``, ``lskd/SwapArguments``) and then runs cosmic-ray's own command
line, so ``python mutation/cr_lskd.py init|exec ...`` is ``cosmic-ray init|exec ...`` with the extra
operators (the local distributor applies mutants in this process, so they are known where they run).

- ``RemoveCall``: a call whose result is discarded (a statement such as ``h.update(x)`` or
  ``out.append(row)``) becomes ``None``: the side effect is lost.
- ``SwapArguments``: two neighbouring positional arguments of a call change places
  (``f(a, b)`` -> ``f(b, a)``); pairs whose two arguments are the same text, and calls of functions
  symmetric in them (``max``, ``min``, ``isclose``, ...), are skipped (no change).
"""

from __future__ import annotations

import sys
from typing import Iterator, List, Tuple

import parso.python.tree as pt
from cosmic_ray.operators.operator import Example, Operator

Position = Tuple[Tuple[int, int], Tuple[int, int]]


def _is_call(node: object) -> bool:
    """``a.b(...)``, ``f(...)``: an atom_expr/power whose last trailer is a call."""
    if not isinstance(node, pt.PythonNode) or node.type not in ("atom_expr", "power"):
        return False
    last = node.children[-1]
    return isinstance(last, pt.PythonNode) and last.type == "trailer" and last.children[0] == "("


class RemoveCall(Operator):
    """Deletes a call whose result is not used (an expression statement): ``f(x)`` -> ``None``."""

    def mutation_positions(self, node: object) -> Iterator[Position]:
        if _is_call(node) and node.parent is not None and node.parent.type == "simple_stmt":  # type: ignore[attr-defined]
            yield (node.start_pos, node.end_pos)  # type: ignore[attr-defined]

    def mutate(self, node: pt.PythonNode, index: int) -> pt.Keyword:
        assert index == 0
        return pt.Keyword("None", node.start_pos, prefix=node.get_first_leaf().prefix)

    @classmethod
    def examples(cls) -> Tuple[Example, ...]:
        return (Example("out.append(x)\n", "None\n"),)


def _positional(arglist: pt.PythonNode) -> List[int]:
    """Indices (in ``arglist.children``) of the positional arguments, up to the first keyword or star."""
    out = []
    for i, child in enumerate(arglist.children):
        if child == ",":
            continue
        if child.type == "argument" or (child.type == "star_expr") or getattr(child, "value", None) in ("*", "**"):
            break
        out.append(i)
    return out


def _arglist(node: object) -> "pt.PythonNode | None":
    """The arglist of a call trailer ``( a, b, ... )``, if it has one."""
    if not isinstance(node, pt.PythonNode) or node.type != "trailer" or node.children[0] != "(":
        return None
    inner = node.children[1] if len(node.children) == 3 else None
    return inner if isinstance(inner, pt.PythonNode) and inner.type == "arglist" else None


#: functions symmetric in their two arguments: swapping them changes nothing (an equivalent mutant)
_SYMMETRIC = {"max", "min", "maximum", "minimum", "isclose", "hypot"}


def _callee(trailer: pt.PythonNode) -> str:
    """The called name: ``f`` of ``f(...)``, ``isclose`` of ``math.isclose(...)``."""
    prev = trailer.get_previous_sibling()
    if isinstance(prev, pt.PythonNode) and prev.type == "trailer" and prev.children[0] == ".":
        prev = prev.children[1]
    return str(getattr(prev, "value", ""))


def _swappable_pairs(node: object) -> List[Tuple[int, int]]:
    args = _arglist(node)
    if args is None or _callee(node) in _SYMMETRIC:  # type: ignore[arg-type]
        return []
    pos = _positional(args)
    return [(a, b) for a, b in zip(pos, pos[1:])
            if args.children[a].get_code(include_prefix=False) != args.children[b].get_code(include_prefix=False)]


class SwapArguments(Operator):
    """Swaps two neighbouring positional arguments of a call: ``f(a, b, c)`` -> ``f(b, a, c)`` / ``f(a, c, b)``."""

    def mutation_positions(self, node: object) -> Iterator[Position]:
        for _ in _swappable_pairs(node):
            yield (node.start_pos, node.end_pos)  # type: ignore[attr-defined]

    def mutate(self, node: pt.PythonNode, index: int) -> pt.PythonNode:
        a, b = _swappable_pairs(node)[index]
        args = _arglist(node)
        assert args is not None
        kids = args.children
        first_a, first_b = kids[a].get_first_leaf(), kids[b].get_first_leaf()
        first_a.prefix, first_b.prefix = first_b.prefix, first_a.prefix  # the spacing stays where it was
        kids[a], kids[b] = kids[b], kids[a]
        return node

    @classmethod
    def examples(cls) -> Tuple[Example, ...]:
        return (Example("f(a, b)\n", "f(b, a)\n"), Example("f(a, b, c)\n", "f(a, c, b)\n", occurrence=1))


class LskdOperators:
    """cosmic-ray operator provider ``lskd``."""

    _OPS = {"RemoveCall": RemoveCall, "SwapArguments": SwapArguments}

    def __iter__(self) -> Iterator[str]:
        return iter(self._OPS)

    def __getitem__(self, name: str) -> type:
        return self._OPS[name]


def register() -> None:
    """Add the ``lskd`` provider to cosmic-ray's (a module-level dict filled from entry points)."""
    import cosmic_ray.plugins

    cosmic_ray.plugins.OPERATOR_PROVIDERS.setdefault("lskd", LskdOperators())


if __name__ == "__main__":
    register()
    from cosmic_ray.cli import main

    sys.exit(main(sys.argv[1:]))
