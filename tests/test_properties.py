"""Property-based tests (hypothesis, issue 20 item 3) of the code that turns runs into a user's answer:
the verdict is monotone in the data, a run's hash changes exactly when a defining setting does, a teacher
cache refuses any single changed fingerprint field, and eta is invariant under a common rotation and
scaling of the features (Eq. 1 uses ratios of distances)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from lskd_core import findings
from lskd_core.diffusion import class_stats, diffusion_index
from lskd_core.teacher_cache import CacheMismatch, CacheWriter, TeacherCache

_FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

CELLS = [(a, t) for a in (0.0, 0.1) for t in (1.0, 2.0, 4.0)]


def _rank(verdict: dict, cell) -> int:
    """2: the sole recommendation; 1: among the cells that cannot be told from the best; 0: neither."""
    if verdict.get("recommended") == list(cell):
        return 2
    return 1 if list(cell) in verdict["indistinguishable"] else 0


@_FAST
@given(base=hs.lists(hs.floats(60, 90), min_size=len(CELLS), max_size=len(CELLS)),
       noise_seed=hs.integers(0, 10_000), which=hs.integers(0, len(CELLS) - 1), lift=hs.floats(0.05, 5.0))
def test_raising_a_cells_accuracies_never_makes_it_less_recommended(base, noise_seed, which, lift):
    rng = np.random.default_rng(noise_seed)
    noise = rng.normal(0, 0.5, size=(len(CELLS), 4))
    rows = [{"alpha": a, "T": t, "seed": s, "value": float(base[i] + noise[i, s])}
            for i, (a, t) in enumerate(CELLS) for s in range(4)]
    lifted = [dict(r, value=r["value"] + lift) if (r["alpha"], r["T"]) == CELLS[which] else r for r in rows]
    before = findings.verdict(findings.analyze(rows))
    after = findings.verdict(findings.analyze(lifted))
    assert _rank(after, CELLS[which]) >= _rank(before, CELLS[which])


# -------------------------------------------------------------------------------- run hashes ---
# setting -> new value and the run kinds whose hash it must change (every other run keeps its hash,
# except runs downstream of a changed one: students follow their teacher and cache)
_DEFINING = {"teacher_lr": (0.07, "teacher"), "teacher_epochs": (3, "teacher"), "teacher_seed": (4, "teacher"),
             "cache_dtype": ("bfloat16", "cache"), "student_lr": (0.02, "student"), "student_epochs": (3, "cache"),  # the cache records every student epoch's views
             "kd_beta": (0.5, "student"), "train_samples": (300, "teacher"), "val_samples": (200, "teacher")}
_EXECUTION_ONLY = {"jobs": 2, "launcher": "local"}


def _hashes(**overrides) -> dict:
    from lskd_core import study as S

    cfg = S.load_config("demo", overrides=dict({"temperatures": [1, 4], "seeds": 1}, **overrides))
    return {r.run_id: r.hash for r in S.build_plan(cfg)}


@pytest.fixture(scope="module")
def base_hashes():
    return _hashes()


@_FAST
@given(name=hs.sampled_from(sorted(_DEFINING)))
def test_a_defining_setting_changes_the_hash_of_the_runs_it_defines(base_hashes, name):
    value, first = _DEFINING[name]
    changed = _hashes(**{name: value})
    assert set(changed) == set(base_hashes)
    differ = {run for run in changed if changed[run] != base_hashes[run]}
    order = ["teacher", "cache", "student"]  # each stage depends on the ones before it
    for run in changed:
        stage = next((k for k in order if run.startswith(k)), None)
        if stage is None:
            continue  # exports follow the model they export
        must_change = order.index(stage) >= order.index(first)
        assert (run in differ) == must_change, (name, run, sorted(differ))


@_FAST
@given(name=hs.sampled_from(sorted(_EXECUTION_ONLY)))
def test_an_execution_only_setting_changes_no_hash(base_hashes, name):
    assert _hashes(**{name: _EXECUTION_ONLY[name]}) == base_hashes


# ------------------------------------------------------------------------ cache fingerprints ---
_FINGERPRINT = {"teacher_sha256": "ab" * 32, "dataset": "fashion-mnist", "indices_sha256": "cd" * 32,
                "num_samples": 12, "transform": {"kind": "pad-crop", "size": 28}, "aug_seed": 0, "epochs": 2}


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp") / "cache"
    writer = CacheWriter(root, num_classes=5, num_rows=12, rows_per_shard=5, fingerprint=_FINGERPRINT)
    rng = np.random.default_rng(0)
    for index in writer.pending_shards():
        writer.write_shard(index, rng.normal(size=(len(writer.shard_rows(index)), 5)).astype(np.float32))
    writer.finalize()
    return root


_VALUES = hs.one_of(hs.integers(-5, 50), hs.text(min_size=1, max_size=8), hs.booleans(), hs.none())


@_FAST
@given(field=hs.sampled_from(sorted(_FINGERPRINT)), value=_VALUES)
def test_any_single_changed_fingerprint_field_is_refused_by_name(small_cache, field, value):
    TeacherCache.open(small_cache, _FINGERPRINT)  # the unchanged fingerprint opens
    if value == _FINGERPRINT[field]:
        return
    with pytest.raises(CacheMismatch, match=f"fingerprint field '{field}'"):
        TeacherCache.open(small_cache, dict(_FINGERPRINT, **{field: value}))


@_FAST
@given(field=hs.sampled_from(sorted(_FINGERPRINT)))
def test_a_missing_or_extra_fingerprint_field_is_refused(small_cache, field):
    without = {k: v for k, v in _FINGERPRINT.items() if k != field}
    with pytest.raises(CacheMismatch, match=field):
        TeacherCache.open(small_cache, without)
    with pytest.raises(CacheMismatch, match="extra_field"):
        TeacherCache.open(small_cache, dict(_FINGERPRINT, extra_field=1))


# ------------------------------------------------------------------------------- eta (Eq. 1) ---
@_FAST
@given(seed=hs.integers(0, 10_000), scale=hs.floats(0.01, 100.0), dim=hs.integers(2, 6))
def test_eta_is_invariant_under_a_common_rotation_and_scaling(seed, scale, dim):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 6)
    before = rng.normal(size=(24, dim)) + 2.0 * rng.normal(size=(4, dim))[labels]
    after = before + 0.7 * rng.normal(size=(24, dim))
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    shift = rng.normal(size=dim)
    plain = diffusion_index(class_stats(before, labels), class_stats(after, labels), 0, [1], [2, 3])
    moved = diffusion_index(class_stats(scale * before @ rotation + shift, labels),
                            class_stats(scale * after @ rotation + shift, labels), 0, [1], [2, 3])
    for key in ("eta_s1", "eta_s2"):
        assert math.isclose(plain[key], moved[key], rel_tol=1e-6, abs_tol=1e-6), (key, plain[key], moved[key])
