"""Tests for lskd_core.teacher_cache.

Oracles: torch's own dtype casts, float64 numpy/scipy log-sum-exps over the tail computed here
from a stable argsort, fairseq_plugin's ``expand_topk`` (the live ``--kd-topk`` semantics), the
kd_loss of the raw logits, and sha256 of files written by an uninterrupted build.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tree_hashes
from scipy.special import logsumexp

from lskd_core.losses import kd_loss
from lskd_core.teacher_cache import (
    CacheMismatch,
    CacheWriter,
    TeacherCache,
    describe,
    file_sha256,
    make_fingerprint,
)

C = 12
ROWS = 37
PER_SHARD = 10  # 4 shards, the last one short
FP = make_fingerprint(teacher_sha256="aa" * 32, dataset="toy", indices_sha256="bb" * 32,
                      transform="center", aug_seed=0, epochs=1, topk=None)


def _logits(rows=ROWS, classes=C, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, classes, generator=g, dtype=torch.float64).mul_(scale).float()


def _build(root, logits, *, aux=None, fingerprint=FP, rows_per_shard=PER_SHARD, **kw):
    aux_dim = 0 if aux is None else aux.shape[1]
    writer = CacheWriter(root, num_classes=logits.shape[1], num_rows=logits.shape[0],
                         rows_per_shard=rows_per_shard, aux_dim=aux_dim, fingerprint=fingerprint, **kw)
    for i in writer.pending_shards():
        rows = writer.shard_rows(i)
        writer.write_shard(i, logits[rows.start:rows.stop], None if aux is None else aux[rows.start:rows.stop])
    writer.finalize()
    return writer


def _vouch_for(shard: Path, fname: str) -> None:
    """Record a replaced shard file's size and sha256 in shard.json, so that the shard looks complete and
    only the loader's own checks stand in the way."""
    mark = json.loads((shard / "shard.json").read_text())
    mark["files"][fname] = {"bytes": (shard / fname).stat().st_size, "sha256": file_sha256(shard / fname)}
    (shard / "shard.json").write_text(json.dumps(mark))


ROW_ORDER = np.array([36, 0, 11, 10, 9, 25, 3, 3, 30])  # across shards, unsorted, a repeat


# ------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------
def test_full_fp32_round_trip_is_exact_in_any_row_order_with_aux(tmp_path):
    x = _logits()
    aux = np.arange(ROWS * 3, dtype=np.float32).reshape(ROWS, 3) / 7
    _build(tmp_path / "c", x, aux=aux)
    cache = TeacherCache.open(tmp_path / "c", FP)
    assert cache.kind == "full" and cache.num_rows == ROWS
    for temp in (0.5, 1.0, 1000.0):  # a full cache serves every T
        z = cache.teacher_logits_at(ROW_ORDER, temp)
        assert z.dtype == torch.float32
        assert torch.equal(z, x[ROW_ORDER])
    np.testing.assert_array_equal(cache.aux(torch.tensor(ROW_ORDER)), aux[ROW_ORDER])
    assert cache.teacher_logits_at(np.array([], dtype=np.int64), 1.0).shape == (0, C)


def test_a_batch_inside_one_later_shard_reads_its_own_rows(tmp_path):
    """The one-shard fast path offsets the global row ids by its shard's first row."""
    x = _logits()
    _build(tmp_path / "c", x)
    cache = TeacherCache.open(tmp_path / "c", FP)
    for rows in ([12, 15, 19, 12], [36, 30], [29]):  # all in shard 1, all in the short last shard, a last row
        assert torch.equal(cache.teacher_logits_at(np.array(rows), 1.0), x[rows])


def test_shards_past_row_256_open_and_verify(tmp_path):
    # row numbers read back from shard.json are equal to, not the same objects as, the expected ones
    x = _logits(rows=600, classes=4)
    _build(tmp_path / "c", x, rows_per_shard=250)  # shards [0, 250), [250, 500), [500, 600)
    cache = TeacherCache.open(tmp_path / "c", FP, verify="size")
    assert cache.num_rows == 600 and torch.equal(cache.teacher_logits_at(np.array([599, 250, 0]), 1.0), x[[599, 250, 0]])


def test_open_takes_its_options_by_keyword_only(tmp_path):
    _build(tmp_path / "c", _logits())
    assert TeacherCache.open(root=tmp_path / "c", expected_fingerprint=FP).num_rows == ROWS
    with pytest.raises(TypeError):  # a temperature list in the place of an option is refused, not misread
        TeacherCache.open(tmp_path / "c", FP, (1.0,))


@pytest.mark.parametrize("dtype,torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_full_low_precision_equals_torchs_own_cast(tmp_path, dtype, torch_dtype):
    x = _logits()
    _build(tmp_path / "c", x, dtype=dtype)
    z = TeacherCache.open(tmp_path / "c", FP).teacher_logits_at(ROW_ORDER, 2.0)
    assert torch.equal(z, x[ROW_ORDER].to(torch_dtype).float())
    assert not torch.equal(z, x[ROW_ORDER])  # the rounding did happen
    stored = np.load(tmp_path / "c" / "shard-00000" / "logits.npy", allow_pickle=False)
    assert stored.dtype.itemsize == 2 and stored.shape == (PER_SHARD, C)


def test_float16_overflow_is_refused(tmp_path):
    x = _logits()
    x[0, 0] = 1e5
    writer = CacheWriter(tmp_path / "c", num_classes=C, num_rows=ROWS, rows_per_shard=PER_SHARD,
                         dtype="float16", fingerprint=FP)
    with pytest.raises(ValueError, match="float16 range"):
        writer.write_shard(0, x[:PER_SHARD])


def test_topk_with_k_equal_to_classes_matches_full_cache(tmp_path):
    x = _logits()
    _build(tmp_path / "full", x)
    _build(tmp_path / "topk", x, kind="topk", topk=C, temperatures=(1.0, 4.0, 64.0))
    full = TeacherCache.open(tmp_path / "full", FP)
    topk = TeacherCache.open(tmp_path / "topk", FP, temperatures=(4.0,))
    student = _logits(len(ROW_ORDER), seed=5)
    for temp in (1.0, 4.0, 64.0):
        zf, zk = full.teacher_logits_at(ROW_ORDER, temp), topk.teacher_logits_at(ROW_ORDER, temp)
        lf, lk = kd_loss(student, zf, temp).item(), kd_loss(student, zk, temp).item()
        assert abs(lf - lk) <= 1e-7 * max(1.0, abs(lf))
        torch.testing.assert_close(torch.softmax(zk.double() / temp, -1), torch.softmax(zf.double() / temp, -1),
                                   rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("temp", [1.0, 2.0, 64.0])
def test_topk_tail_mass_exact_against_float64_reference(tmp_path, temp):
    k = 4
    x = _logits(scale=6.0)
    _build(tmp_path / "c", x, kind="topk", topk=k, temperatures=(1.0, 2.0, 64.0))
    z = TeacherCache.open(tmp_path / "c", FP, temperatures=(temp,)).teacher_logits_at(ROW_ORDER, temp)
    p = torch.softmax(z.double() / temp, -1).numpy()
    xs = x[ROW_ORDER].double().numpy() / temp
    for r in range(len(ROW_ORDER)):
        order = np.argsort(-xs[r], kind="stable")
        top, tail = order[:k], order[k:]
        lse_all = logsumexp(xs[r])
        ref_tail_mass = math.exp(logsumexp(xs[r][tail]) - lse_all)
        np.testing.assert_allclose(p[r, tail].sum(), ref_tail_mass, rtol=2e-6)
        np.testing.assert_allclose(p[r, tail], ref_tail_mass / (C - k), rtol=2e-6)  # spread uniformly
        np.testing.assert_allclose(p[r, top], np.exp(xs[r][top] - lse_all), rtol=2e-6)


def test_topk_matches_fairseq_kd_topk_semantics(tmp_path):
    teacher_mod = pytest.importorskip("fairseq_plugin.teacher")
    k, temp = 3, 2.0
    x = _logits()
    _build(tmp_path / "c", x, kind="topk", topk=k, temperatures=(temp,))
    z = TeacherCache.open(tmp_path / "c", FP).teacher_logits_at(ROW_ORDER, temp)
    probs = torch.softmax(x[ROW_ORDER].double() / temp, -1)
    values, indices = probs.topk(k, dim=-1)
    live = teacher_mod.expand_topk(values.double(), indices, C)  # the live --kd-topk target
    torch.testing.assert_close(torch.softmax(z.double() / temp, -1), live.double(), rtol=1e-5, atol=1e-9)


def test_unserved_temperature_is_refused_naming_temperatures(tmp_path):
    _build(tmp_path / "c", _logits(), kind="topk", topk=3, temperatures=(1.0, 4.0))
    with pytest.raises(CacheMismatch, match="temperatures"):
        TeacherCache.open(tmp_path / "c", FP, temperatures=(2.0,))
    cache = TeacherCache.open(tmp_path / "c", FP, temperatures=(4.0, 1.0))
    with pytest.raises(CacheMismatch, match="temperatures"):
        cache.teacher_logits_at([0], 3.0)


# ------------------------------------------------------------------------------------------
# stale and damaged caches
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("teacher_sha256", "cc" * 32), ("indices_sha256", "dd" * 32), ("transform", "rrc224"), ("topk", 5),
])
def test_stale_fingerprint_refused_naming_field_and_values(tmp_path, field, value):
    _build(tmp_path / "c", _logits())
    expected = dict(FP, **{field: value})
    with pytest.raises(CacheMismatch) as err:
        TeacherCache.open(tmp_path / "c", expected)
    message = str(err.value)
    assert repr(field) in message and json.dumps(FP[field]) in message and json.dumps(value) in message
    assert "rebuild" in message


def test_fingerprint_field_on_one_side_only_is_refused(tmp_path):
    _build(tmp_path / "c", _logits())
    with pytest.raises(CacheMismatch, match="'dict_sha256' is <absent>"):
        TeacherCache.open(tmp_path / "c", dict(FP, dict_sha256="ee"))
    smaller = {k: v for k, v in FP.items() if k != "aug_seed"}
    with pytest.raises(CacheMismatch, match="'aug_seed' is 0 in the cache but <absent>"):
        TeacherCache.open(tmp_path / "c", smaller)


def test_too_few_rows_refused(tmp_path):
    _build(tmp_path / "c", _logits())
    with pytest.raises(CacheMismatch, match="num_rows = 37.*at least 74.*epochs"):
        TeacherCache.open(tmp_path / "c", FP, min_rows=2 * ROWS)
    assert TeacherCache.open(tmp_path / "c", FP, min_rows=ROWS).num_rows == ROWS
    # more rows than the run needs (a cache built for more epochs) serve it
    assert TeacherCache.open(tmp_path / "c", FP, min_rows=ROWS - 5).num_rows == ROWS


@pytest.mark.parametrize("rows", [PER_SHARD - 1, PER_SHARD + 1])  # a row short, a row too many
def test_a_shard_array_of_the_wrong_shape_is_refused_naming_both_shapes(tmp_path, rows):
    _build(tmp_path / "c", _logits())
    shard = tmp_path / "c" / "shard-00001"
    np.save(shard / "logits.npy", np.zeros((rows, C), dtype=np.float32))
    _vouch_for(shard, "logits.npy")
    cache = TeacherCache.open(tmp_path / "c", FP, verify="full")
    with pytest.raises(CacheMismatch, match=rf"holds float32 \({rows}, {C}\), expected float32 \({PER_SHARD}, {C}\)") as got:
        cache.teacher_logits_at([12], 1.0)
    assert str(got.value).endswith(f"; delete {tmp_path / 'c'} and rebuild the teacher cache with this run's settings")


def test_no_rows_from_a_one_shard_cache(tmp_path):
    _build(tmp_path / "c", _logits(rows=6), rows_per_shard=PER_SHARD)  # 6 rows: a single shard
    cache = TeacherCache.open(tmp_path / "c", FP)
    assert cache.teacher_logits_at(np.array([], dtype=np.int64), 1.0).shape == (0, C)


def test_truncated_shard_file_refused(tmp_path):
    _build(tmp_path / "c", _logits())
    path = tmp_path / "c" / "shard-00002" / "logits.npy"
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(CacheMismatch, match="shard-00002/logits.npy is .* bytes.*truncated"):
        TeacherCache.open(tmp_path / "c", FP)


def test_modified_shard_file_refused_by_hash(tmp_path):
    _build(tmp_path / "c", _logits())
    path = tmp_path / "c" / "shard-00001" / "logits.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CacheMismatch, match="shard-00001/logits.npy sha256"):
        TeacherCache.open(tmp_path / "c", FP, verify="full")
    with pytest.raises(CacheMismatch, match="shard-00001/logits.npy sha256"):  # the mode as a run-time string
        TeacherCache.open(tmp_path / "c", FP, verify="".join(["fu", "ll"]))
    lazy = TeacherCache.open(tmp_path / "c", FP)  # sizes fine: opens, fails on first read of that shard
    assert torch.equal(lazy.teacher_logits_at([0], 1.0), _logits()[[0]])
    with pytest.raises(CacheMismatch, match="shard-00001/logits.npy sha256"):
        lazy.teacher_logits_at([PER_SHARD], 1.0)
    # the mode as a command line gives it (an equal string, not the literal) checks the same way
    from_cli = TeacherCache.open(tmp_path / "c", FP, verify="".join(["la", "zy"]))
    with pytest.raises(CacheMismatch, match="shard-00001/logits.npy sha256"):
        from_cli.teacher_logits_at([PER_SHARD], 1.0)


def test_deleted_shard_marker_or_header_refused(tmp_path):
    _build(tmp_path / "c", _logits())
    (tmp_path / "c" / "shard-00003" / "shard.json").unlink()
    with pytest.raises(CacheMismatch, match="shard-00003/shard.json missing"):
        TeacherCache.open(tmp_path / "c", FP)
    (tmp_path / "c" / "header.json").unlink()
    with pytest.raises(CacheMismatch, match="header.json missing"):
        TeacherCache.open(tmp_path / "c", FP)


@pytest.mark.parametrize("as_npy", [True, False], ids=["object-npy", "raw-pickle"])
def test_a_pickle_in_a_shard_is_refused_without_running_code(tmp_path, as_npy):
    """An object array in an .npy, or a raw pickle in its place (memory-mapping stops the first, only
    allow_pickle=False stops the second): refused, and the payload never runs."""
    import pickle

    _build(tmp_path / "c", _logits())
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    shard = tmp_path / "c" / "shard-00000"
    if as_npy:
        np.save(shard / "logits.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    else:
        (shard / "logits.npy").write_bytes(pickle.dumps(Payload()))
    _vouch_for(shard, "logits.npy")
    cache = TeacherCache.open(tmp_path / "c", FP, verify="full")
    with pytest.raises(CacheMismatch, match="cannot be read safely") as err:
        cache.teacher_logits_at([0], 1.0)
    assert not marker.exists()
    # the line ends with the remedy: the default one names the cache to delete and rebuild
    assert str(err.value).endswith(f"; delete {tmp_path / 'c'} and rebuild the teacher cache with this run's settings")


# ------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind_kw", [{}, {"kind": "topk", "topk": 4, "temperatures": (1.0, 4.0), "dtype": "bfloat16"}])
def test_killed_build_resumes_to_byte_identical_shards(tmp_path, kind_kw):
    x = _logits()
    aux = np.linspace(0, 1, ROWS * 2, dtype=np.float32).reshape(ROWS, 2)
    _build(tmp_path / "ref", x, aux=aux, **kind_kw)

    def writer():
        return CacheWriter(tmp_path / "killed", num_classes=C, num_rows=ROWS, rows_per_shard=PER_SHARD,
                           aux_dim=2, fingerprint=FP, **kind_kw)

    first = writer()
    for i in (0, 2):
        rows = first.shard_rows(i)
        first.write_shard(i, x[rows.start:rows.stop], aux[rows.start:rows.stop])
    # What a kill leaves: a half-written temporary shard and a shard directory without its marker.
    half = tmp_path / "killed" / ".shard-00001.tmp-999-dead"
    half.mkdir()
    (half / "logits.npy").write_bytes(b"\x93NUMPY partial")
    (tmp_path / "killed" / "shard-00003").mkdir()
    (tmp_path / "killed" / "shard-00003" / "aux.npy").write_bytes(b"junk")

    resumed = writer()
    assert resumed.pending_shards() == [1, 3]
    for i in resumed.pending_shards():
        rows = resumed.shard_rows(i)
        resumed.write_shard(i, x[rows.start:rows.stop], aux[rows.start:rows.stop])
    resumed.write_shard(0, x[:PER_SHARD], aux[:PER_SHARD])  # rewriting a done shard changes nothing
    resumed.finalize()
    assert tree_hashes(tmp_path / "killed") == tree_hashes(tmp_path / "ref")


def test_writer_over_other_header_refused_same_header_resumes(tmp_path):
    x = _logits()
    w = CacheWriter(tmp_path / "c", num_classes=C, num_rows=ROWS, rows_per_shard=PER_SHARD, fingerprint=FP)
    w.write_shard(1, x[PER_SHARD:2 * PER_SHARD])
    with pytest.raises(CacheMismatch, match="fingerprint.teacher_sha256"):
        CacheWriter(tmp_path / "c", num_classes=C, num_rows=ROWS, rows_per_shard=PER_SHARD,
                    fingerprint=dict(FP, teacher_sha256="ff"))
    with pytest.raises(CacheMismatch, match="topk"):
        CacheWriter(tmp_path / "c", num_classes=C, num_rows=ROWS, rows_per_shard=PER_SHARD, kind="topk",
                    topk=3, temperatures=(1.0,), fingerprint=FP)
    again = CacheWriter(tmp_path / "c", num_classes=C, num_rows=ROWS, rows_per_shard=PER_SHARD, fingerprint=FP)
    assert again.pending_shards() == [0, 2, 3]
    with pytest.raises(CacheMismatch, match="incomplete: 3 of 4"):
        again.finalize()
    with pytest.raises(CacheMismatch, match="shard-00000/shard.json missing"):
        TeacherCache.open(tmp_path / "c", FP)


def test_bad_writer_inputs_give_clear_errors(tmp_path):
    kw = dict(num_classes=C, num_rows=ROWS, rows_per_shard=PER_SHARD, fingerprint=FP)
    with pytest.raises(ValueError, match="temperatures"):
        CacheWriter(tmp_path / "a", kind="topk", topk=3, **kw)
    with pytest.raises(ValueError, match="topk must be at most"):
        CacheWriter(tmp_path / "b", kind="topk", topk=C + 1, temperatures=(1,), **kw)
    for name, value, minimum in (("num_rows", 0, 1), ("rows_per_shard", -3, 1), ("aux_dim", -1, 0),
                                 ("num_rows", 2.5, 1), ("rows_per_shard", True, 1)):
        with pytest.raises(ValueError, match=rf"{name} must be an integer >= {minimum}, got {value}"):
            CacheWriter(tmp_path / "n", **dict(kw, **{name: value}))
    with pytest.raises(ValueError, match="topk only applies to kind='topk'"):
        CacheWriter(tmp_path / "f", kind="".join(["fu", "ll"]), topk=3, **kw)
    w = CacheWriter(tmp_path / "c", **kw)
    with pytest.raises(ValueError, match=r"shape \(10, 12\)"):
        w.write_shard(0, _logits(9))
    bad = _logits(PER_SHARD)
    bad[3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        w.write_shard(0, bad)
    with pytest.raises(ValueError, match="aux_dim=0"):
        w.write_shard(0, _logits(PER_SHARD), aux=np.zeros((PER_SHARD, 1)))
    with pytest.raises(ValueError, match="shard index"):
        w.write_shard(4, _logits(PER_SHARD))
    _build(tmp_path / "d", _logits())
    with pytest.raises(ValueError, match=r"row ids must lie in \[0, 37\)"):
        TeacherCache.open(tmp_path / "d", FP).teacher_logits_at([37], 1.0)


def test_fingerprint_normalisation_and_file_hash(tmp_path):
    fp = make_fingerprint(temperatures=(1, 4.0), epochs=np.int64(3), path=Path("a/b"))
    assert fp == {"temperatures": [1, 4.0], "epochs": 3, "path": "a/b"}
    data = os.urandom(3 * (1 << 20) + 17)  # several read chunks
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    with pytest.raises(TypeError, match="JSON-like"):
        make_fingerprint(model=object())


def test_describe_counts_bytes(tmp_path):
    x = _logits()
    _build(tmp_path / "c", x, kind="topk", topk=4, temperatures=(1.0, 4.0))
    info = describe(tmp_path / "c")
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c").rglob("*") if p.is_file())
    assert info["bytes_on_disk"] == on_disk
    assert info["rows"] == ROWS and info["shards"] == info["shards_complete"] == 4
    assert info["bytes_per_row"] == pytest.approx(on_disk / ROWS)
    # values fp32 (4 B) + indices int16 (2 B) per kept class + 2 float32 tail LSEs per row, + headers
    payload = ROWS * (4 * 4 + 4 * 2 + 2 * 4)
    assert payload < on_disk < payload + 4 * 2000 + 1000


def test_topk_order_is_descending_with_ties_by_class_id(tmp_path):
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    fp = make_fingerprint(case="ties")
    _build(tmp_path / "c", x, fingerprint=fp, rows_per_shard=3, kind="topk", topk=4, temperatures=(1.0,))
    shard = tmp_path / "c" / "shard-00000"
    values = np.load(shard / "values.npy", allow_pickle=False)
    indices = np.load(shard / "indices.npy", allow_pickle=False)
    assert indices.dtype == np.int16
    np.testing.assert_array_equal(values, [[3, 3, 3, 2], [5, 5, 5, 5], [5, 4, 3, 2]])
    np.testing.assert_array_equal(indices[0], [1, 2, 4, 5])
    np.testing.assert_array_equal(indices[2], [5, 4, 3, 2])
    assert list(indices[1]) == sorted(indices[1]) and len(set(indices[1])) == 4
    # tail of row 0 at T = 1: classes 0 and 3 (logits 1 and 0)
    tail = np.load(shard / "tail_lse.npy", allow_pickle=False)
    assert tail[0, 0] == pytest.approx(math.log(math.e + 1.0), rel=1e-7)


def test_cache_pickles_without_its_memory_maps(tmp_path):
    import pickle

    x = _logits()
    _build(tmp_path / "c", x)
    cache = TeacherCache.open(tmp_path / "c", FP)
    cache.teacher_logits_at(ROW_ORDER, 1.0)  # maps some shards
    data = pickle.dumps(cache)
    assert len(data) < 2000  # no logits inside (37 x 12 float32 alone is 1776 bytes)
    assert torch.equal(pickle.loads(data).teacher_logits_at(ROW_ORDER, 1.0), x[ROW_ORDER])


@pytest.mark.parametrize("key,shift", [("row_start", -1), ("row_start", +1), ("row_stop", -1), ("row_stop", +1)])
def test_a_shard_mark_for_other_rows_is_refused(tmp_path, key, shift):
    """shard.json must name exactly its shard's rows [10, 20): one row off either end, either way, is refused."""
    _build(tmp_path / "c", _logits())
    mark_path = tmp_path / "c" / "shard-00001" / "shard.json"
    mark = json.loads(mark_path.read_text())
    assert (mark["row_start"], mark["row_stop"]) == (PER_SHARD, 2 * PER_SHARD)
    mark[key] += shift
    mark_path.write_text(json.dumps(mark))
    with pytest.raises(CacheMismatch, match=r"shard-00001/shard.json does not describe rows \[10, 20\)"):
        TeacherCache.open(tmp_path / "c", FP)


def test_a_sampled_header_keeps_its_seed_whatever_string_names_the_kind(tmp_path):
    """The kind usually arrives from a command line (a string built at run time, not the interned
    literal): the sampled header still records the seed that makes its draws reproducible."""
    kind = "".join(["sam", "pled"])
    w = CacheWriter(tmp_path / "c", num_classes=C, num_rows=ROWS, rows_per_shard=PER_SHARD, kind=kind, topk=4,
                    temperatures=(1.0,), fingerprint=FP, sample_seed=3)
    assert w.header["kind"] == "sampled" and w.header["sample_seed"] == 3
    full = CacheWriter(tmp_path / "f", num_classes=C, num_rows=ROWS, rows_per_shard=PER_SHARD, fingerprint=FP)
    assert "sample_seed" not in full.header


def test_a_top_k_cache_over_a_wide_vocabulary_with_k_equal_to_it_is_the_full_distribution(tmp_path):
    """K = C = 300 (ints beyond CPython's small-int cache, compared by value): no tail classes."""
    x = _logits(rows=6, classes=300)
    fp = dict(FP)
    _build(tmp_path / "c", x, fingerprint=fp, kind="topk", topk=300, temperatures=(2.0,))
    z = TeacherCache.open(tmp_path / "c", fp).teacher_logits_at(np.arange(6), 2.0)
    torch.testing.assert_close(torch.softmax(z.double() / 2, -1), torch.softmax(x.double() / 2, -1), rtol=1e-6, atol=1e-12)


def test_the_cache_reports_what_it_serves_and_its_format_version(tmp_path):
    _build(tmp_path / "c", _logits(), kind="topk", topk=4, temperatures=(4.0, 1.0))
    cache = TeacherCache.open(tmp_path / "c", FP)
    assert cache.temperatures == [1.0, 4.0] and cache.num_classes == C and cache.kind == "topk"
    header = json.loads((tmp_path / "c" / "header.json").read_text())
    assert header["format"] == "lskd-teacher-cache" and header["version"] == 1  # docs/formats.md


def test_a_negative_row_id_is_refused_not_read_from_the_end(tmp_path):
    _build(tmp_path / "c", _logits())
    cache = TeacherCache.open(tmp_path / "c", FP)
    for rows in ([-1], [3, -1], [ROWS]):
        with pytest.raises(ValueError, match=rf"row ids must lie in \[0, {ROWS}\)"):
            cache.teacher_logits_at(np.array(rows), 1.0)


def test_a_full_cache_read_as_sampled_names_the_remedy(tmp_path):
    _build(tmp_path / "c", _logits())
    with pytest.raises(CacheMismatch) as err:
        TeacherCache.open(tmp_path / "c", FP).sampled_at([0], 1.0)
    assert str(err.value) == (f"teacher cache {tmp_path / 'c'} is a full cache, not a sampled one; delete "
                              f"{tmp_path / 'c'} and rebuild the teacher cache with this run's settings with "
                              "sampling (or ask for its own kind)")


def test_a_sampled_cache_holds_the_teachers_log_probabilities_of_its_draws(tmp_path):
    """Each draw's stored log p is log softmax(z / T) of the teacher at that token, the weights are 1
    (draws from the teacher itself), at every served T; read back after the header went through JSON."""
    x = _logits()
    _build(tmp_path / "c", x, kind="sampled", topk=5, temperatures=(1.0, 4.0), sample_seed=3)
    cache = TeacherCache.open(tmp_path / "c", FP)
    assert cache.kind == "sampled"
    for temp in (1.0, 4.0):
        s = cache.sampled_at(ROW_ORDER, temp)
        assert s.ids.shape == (len(ROW_ORDER), 5) and int(s.ids.min()) >= 0 and int(s.ids.max()) < C
        want = torch.log_softmax(x[ROW_ORDER].double() / temp, -1).gather(1, s.ids)
        torch.testing.assert_close(s.teacher_logp.double(), want, rtol=0, atol=1e-6)
        assert torch.equal(s.weights, torch.ones_like(s.teacher_logp))


def test_one_aux_float_per_row_round_trips(tmp_path):
    x = _logits()
    aux = (np.arange(ROWS, dtype=np.float32) / 3).reshape(ROWS, 1)
    _build(tmp_path / "c", x, aux=aux)
    np.testing.assert_array_equal(TeacherCache.open(tmp_path / "c", FP).aux(torch.tensor(ROW_ORDER)), aux[ROW_ORDER])


def test_a_header_of_another_format_is_refused(tmp_path):
    _build(tmp_path / "c", _logits())
    path = tmp_path / "c" / "header.json"
    header = json.loads(path.read_text())
    header["format"] = "someone-elses-cache"
    path.write_text(json.dumps(header))
    with pytest.raises(CacheMismatch, match="header.json is not a lskd-teacher-cache header; delete"):
        TeacherCache.open(tmp_path / "c", FP)


def test_verify_size_checks_sizes_only(tmp_path):
    """The documented trade: 'size' skips the hashes, so a same-size change is read, not refused ('lazy'
    refuses it on first read, test_modified_shard_file_refused_by_hash)."""
    _build(tmp_path / "c", _logits())
    path = tmp_path / "c" / "shard-00001" / "logits.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    z = TeacherCache.open(tmp_path / "c", FP, verify="size").teacher_logits_at([PER_SHARD], 1.0)
    assert z.shape == (1, C)


def test_token_ids_beyond_int16_are_stored_in_a_wider_type(tmp_path):
    """A 32,769-token vocabulary has id 32,768, one more than int16 holds: it must come back as itself."""
    classes = 32769
    x = torch.zeros(2, classes)
    x[0, classes - 1] = 10.0
    x[1, classes - 2] = 10.0  # 32,767: the last id int16 holds
    _build(tmp_path / "c", x, rows_per_shard=2, kind="topk", topk=1, temperatures=(1.0,))
    z = TeacherCache.open(tmp_path / "c", FP).teacher_logits_at(np.arange(2), 1.0)
    assert z.argmax(dim=1).tolist() == [classes - 1, classes - 2]
