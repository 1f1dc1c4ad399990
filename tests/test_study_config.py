"""Study settings (lskd_core.study.config): presets, files, flags and their validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lskd_core import study as S

ROOT = Path(__file__).resolve().parent.parent


def _ids(plan):
    return [r.run_id for r in plan]


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
def test_presets_load_and_demo_is_default():
    assert {"demo", "full", "translation"} <= set(S.available_presets())
    cfg = S.load_config()
    assert cfg.name == "demo" and cfg.task == "vision"
    assert cfg.alphas == [0.0, 0.1] and cfg.temperatures == [1.0, 64.0]  # the power-sized demo (docs/study.md)
    full = S.load_config("full")
    assert full.train_samples is None and full.val_samples is None  # full data
    tr = S.load_config("translation")
    assert tr.task == "translation"


def test_precedence_preset_file_flags(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('preset = "demo"\nseeds = 3\ntemperatures = [1, 4]\n'
                        '[teacher]\nepochs = 7\nmodel = "lskd_cnn_t"\n', encoding="utf-8")
    cfg = S.load_config(config_file=str(cfg_file), overrides={"seeds": 2})
    assert cfg.teacher_epochs == 7  # [teacher] epochs -> teacher_epochs
    assert cfg.temperatures == [1.0, 4.0]
    assert cfg.seed_list == [0, 1]  # the flag beats the file
    # tables that are not a field prefix only group settings
    grouped = tmp_path / "g.toml"
    grouped.write_text('[grid]\nalphas = [0, 0.2]\n[analysis]\ntarget_classes = [1, 3]\ntrain_samples = 50\n',
                       encoding="utf-8")
    cfg = S.load_config(config_file=str(grouped))
    assert cfg.alphas == [0.0, 0.2] and cfg.target_classes == [1, 3] and cfg.analysis_train_samples == 50
    # the shipped example config loads
    ex = S.load_config(config_file=str(ROOT / "examples" / "study" / "my_study.toml"))
    assert ex.name == "my-study" and ex.seed_list == [0, 1, 2] and ex.jobs == 2
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"alphas": [0.2, 0], "seeds": [5, 7]}), encoding="utf-8")
    cfg = S.load_config(config_file=str(j))
    assert cfg.alphas == [0.0, 0.2] and cfg.seed_list == [5, 7] and cfg.first_seed == 5


@pytest.mark.parametrize("override, word", [
    ({"alphas": [1.0]}, "alphas"),
    ({"temperatures": [0]}, "temperatures"),
    ({"temperatures": [1, 1]}, "temperatures"),
    ({"seeds": 0}, "seeds"),
    ({"kd_beta": 2}, "kd_beta"),
    ({"projection_classes": [1, 2]}, "projection_classes"),
    ({"student_epochs": 0}, "student_epochs"),
    ({"task": "audio"}, "task"),
    ({"no_such_setting": 1}, "no_such_setting"),
])
def test_bad_settings_name_the_setting(override, word):
    with pytest.raises(ValueError, match=word):
        S.load_config(overrides=override)


def test_bad_config_file(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("seeds = = 3", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot be parsed"):
        S.load_config(config_file=str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        S.load_config(config_file=str(tmp_path / "missing.json"))
    assert S.main(["--config", str(bad)]) == 2
