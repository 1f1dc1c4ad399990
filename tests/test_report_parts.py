"""Parts of the report package: the shared hierarchy selection, the strict JSON reading of the
run-dir view, and the JSON helpers both the study and the report use."""

from __future__ import annotations

import json
import math

import pytest

from lskd_core import classsets
from lskd_core.jsonio import BadJson, jsonable, num, read_json_object
from lskd_core.report import StudyView, select_hierarchy, write_report
from lskd_core.study import build_plan, load_config, write_manifest


def test_read_json_object_is_strict(tmp_path):
    assert read_json_object(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadJson, match="bad.json is not valid JSON"):
        read_json_object(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(BadJson, match="holds a list"):
        read_json_object(tmp_path / "list.json")
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json_object(tmp_path / "ok.json") == {"a": 1}


def test_num_and_jsonable():
    assert [num(0.1), num(2.0), num(64), num(1e-3)] == ["0.1", "2", "64", "0.001"]
    assert jsonable({"x": float("nan"), 1: (1.5, math.inf)}) == {"x": None, "1": [1.5, None]}


def test_select_hierarchy_modes(tmp_path):
    fm = select_hierarchy("fashion-mnist", None, 10)
    assert fm.nodes == list(classsets.FASHION_MNIST_CLASSES) and "Fashion-MNIST" in fm.source
    assert set(fm.nodes) <= set(fm.parents)
    with pytest.raises(ValueError, match="11 classes"):
        select_hierarchy("fashion-mnist", None, 11)
    with pytest.raises(ValueError, match="class_names"):
        select_hierarchy("wordnet", None, 3)
    pm = tmp_path / "parents.json"
    pm.write_text(json.dumps({"a": "animal", "b": "animal", "c": "thing", "animal": "thing", "thing": None}))
    ch = select_hierarchy(str(pm), ["a", "b", "c"], 3)
    assert ch.nodes == ["a", "b", "c"] and ch.parents["a"] == ["animal"] and ch.source == f"parent map {pm}"
    # the sets follow the tree: a's nearest class is b (shared parent), c is the far one
    s1, s2 = classsets.ClassHierarchy(ch.parents, ch.nodes).sets(0, 1, 1)
    assert (s1, s2) == ([1], [2])
    with pytest.raises(ValueError, match="has 3 classes but the models have 4"):
        select_hierarchy(str(pm), ["a", "b", "c"], 4)


def test_view_leaves_out_damaged_results_and_refuses_a_damaged_manifest(tmp_path):
    cfg = load_config(overrides={"seeds": 1, "temperatures": [1, 2], "analysis": False})
    plan = build_plan(cfg)
    write_manifest(tmp_path, cfg, plan)
    for r in plan:
        d = tmp_path / "runs" / r.run_id
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"status": "done", "val_acc1": 70.0, "val_acc5": 90.0}))
    (tmp_path / "runs" / "student_a0_T2_s0" / "result.json").write_text("garbage{")
    view = StudyView(tmp_path)
    assert "student_a0_T2_s0" not in view.results and len(view.results) == len(plan) - 1
    res = json.loads((write_report(tmp_path) / "results.json").read_text())
    assert res["runs"]["not_done"] == ["student_a0_T2_s0"]
    assert res["accuracy_grid"]["status"] == "partial"
    (tmp_path / "study.json").write_text("[]")
    with pytest.raises(ValueError, match="study.json"):
        StudyView(tmp_path)
