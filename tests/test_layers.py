"""The package's layers, read off its import graph (every import: top level, inside functions and
under TYPE_CHECKING), as the README's Development section describes them:

    core (lskd_core's modules)  <  study internals  <  report  <  advise  <  study entry points
    plugins (vision_plugin, fairseq_plugin) build on core only; lskd_core never imports a plugin

No module may import one of a higher layer, and the graph has no cycle. The few exceptions are
listed below, each with the reason it is not a dependency in the wrong direction.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lskd_core", "vision_plugin", "fairseq_plugin")
#: study modules that run a whole study or a command and so may read the report and the advisor
STUDY_ENTRY = {"lskd_core.study", "lskd_core.study.__main__", "lskd_core.study.cli", "lskd_core.study.runner"}
RANK = {"core": 0, "study": 1, "report": 2, "advise": 3, "entry": 4}
#: (importer, imported): why the edge is allowed
EXCEPTIONS = {
    ("lskd_core.study.tasks.vision_checks", "vision_plugin.models"):
        "validates model names against the plugin's registry before any compute, lazily and only when the "
        "plugin is installed (says nothing otherwise); the plugin never imports the study",
}


def _modules() -> Dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def _targets(module: str, path: Path, node: ast.AST, mods: Dict[str, Path]) -> List[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
    out = []
    for name in names:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in mods and name != module:
            out.append(name)
    return out


def import_graph() -> Dict[str, Set[str]]:
    mods = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_targets(module, path, node, mods))
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "lskd_core":
        return "plugin"
    if module in STUDY_ENTRY:
        return "entry"
    return parts[1] if len(parts) > 1 and parts[1] in ("study", "report", "advise") else "core"


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _wrong_way(graph: Dict[str, Set[str]]) -> List[str]:
    bad = []
    for src, deps in graph.items():
        for dst in deps:
            ls, ld = _layer(src), _layer(dst)
            if ls == "plugin":
                wrong = ld not in ("plugin", "core")
            elif ld == "plugin":
                wrong = True  # lskd_core never imports a plugin
            else:
                wrong = RANK[ld] > RANK[ls]
            if wrong and (src, dst) not in EXCEPTIONS:
                bad.append(f"{src} ({ls}) imports {dst} ({ld})")
    return sorted(bad)


def test_the_import_graph_has_no_cycle():
    assert _cycles(import_graph()) == []


def test_no_module_imports_a_higher_layer():
    assert _wrong_way(import_graph()) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    # the checks themselves: a planted cycle and planted wrong-way edges are reported
    graph = {"lskd_core.a": {"lskd_core.b"}, "lskd_core.b": {"lskd_core.c"}, "lskd_core.c": {"lskd_core.a"},
             "lskd_core.d": set()}
    assert _cycles(graph) == [["lskd_core.a", "lskd_core.b", "lskd_core.c"]]
    up = {"lskd_core.study.plan": {"lskd_core.report.view"}, "lskd_core.report.view": set(),
          "vision_plugin.eta_monitor": {"lskd_core.advise.signals"}, "lskd_core.advise.signals": set(),
          "lskd_core.losses": {"fairseq_plugin.teacher"}, "fairseq_plugin.teacher": {"lskd_core.losses"}}
    assert _wrong_way(up) == ["lskd_core.losses (core) imports fairseq_plugin.teacher (plugin)",
                              "lskd_core.study.plan (study) imports lskd_core.report.view (report)",
                              "vision_plugin.eta_monitor (plugin) imports lskd_core.advise.signals (advise)"]


def test_every_exception_is_still_an_edge():
    graph = import_graph()
    assert [e for e in EXCEPTIONS if e[1] not in graph.get(e[0], set())] == []
