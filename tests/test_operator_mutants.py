"""The two mutation operators lskd adds to cosmic-ray (mutation/cr_lskd.py, issue 20): a removed call and
swapped arguments, on code snippets whose mutants are written out by hand. Skipped without cosmic-ray
(the ``mutation`` extra)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("cosmic_ray")
from cosmic_ray.mutating import mutate_code  # noqa: E402

_spec = importlib.util.spec_from_file_location("cr_lskd", Path(__file__).resolve().parents[1] / "mutation" / "cr_lskd.py")
assert _spec is not None and _spec.loader is not None
cr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cr)


def _all(src, op):
    out, i = [], 0
    while (got := mutate_code(src, op, i)) is not None:
        out.append(got)
        i += 1
    return out


def test_remove_call_drops_only_calls_whose_result_is_discarded():
    src = "def f(h, xs):\n    h.update(b'x')\n    y = len(xs)\n    print(y)\n    return g(y)\n"
    assert _all(src, cr.RemoveCall()) == [
        "def f(h, xs):\n    None\n    y = len(xs)\n    print(y)\n    return g(y)\n",
        "def f(h, xs):\n    h.update(b'x')\n    y = len(xs)\n    None\n    return g(y)\n"]


def test_swap_arguments_swaps_neighbouring_positional_arguments():
    src = "r = f(a, b.c, k=1)\ns = g(x, x)\nt = max(p, q) + math.isclose(p, q)\nu = h(m, *rest)\n"
    assert _all(src, cr.SwapArguments()) == [
        "r = f(b.c, a, k=1)\ns = g(x, x)\nt = max(p, q) + math.isclose(p, q)\nu = h(m, *rest)\n"]
    three = _all("f(a, b, c)\n", cr.SwapArguments())
    assert three == ["f(b, a, c)\n", "f(a, c, b)\n"]


def test_the_provider_is_registered_under_lskd():
    import cosmic_ray.plugins as plugins

    cr.register()
    assert plugins.get_operator("lskd/RemoveCall") is cr.RemoveCall
    assert {"lskd/RemoveCall", "lskd/SwapArguments"} <= set(plugins.operator_names())
