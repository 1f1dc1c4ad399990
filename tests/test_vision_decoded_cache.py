"""The decoded-data cache (vision_plugin.decoded_cache) and read_idx through it: the same arrays
as decoding, never a stale or damaged copy, and no error when the cache cannot be written."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from vision_plugin import decoded_cache as dc
from vision_plugin.datasets import read_idx


def _idx_gz(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(dc.CACHE_ENV, str(root))
    return root


class Counter:
    def __init__(self, array):
        self.array, self.calls = array, 0

    def __call__(self):
        self.calls += 1
        return self.array


def test_second_decode_is_served_from_the_cache(cache):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    decode = Counter(arr)
    first = dc.cached_decode(b"compressed bytes", decode)
    second = dc.cached_decode(b"compressed bytes", decode)
    assert decode.calls == 1 and np.array_equal(first, arr) and np.array_equal(second, arr)
    assert second.dtype == arr.dtype and len(list(cache.glob("*.npy"))) == 1
    # other bytes (a replaced file) are another key: decoded, never served the old array
    other = Counter(arr + 1)
    assert np.array_equal(dc.cached_decode(b"other bytes", other), arr + 1) and other.calls == 1


def test_damaged_or_mismatched_copies_are_decoded_again(cache):
    arr = np.ones((4, 5), dtype=np.uint8)
    decode = Counter(arr)
    dc.cached_decode(b"x", decode)
    (path,) = cache.glob("*.npy")
    path.write_bytes(path.read_bytes()[:40])  # truncated
    assert np.array_equal(dc.cached_decode(b"x", decode), arr) and decode.calls == 2
    np.save(path, np.zeros((2, 2), dtype=np.uint8))  # a valid .npy, but not what the header says
    assert np.array_equal(dc.cached_decode(b"x", decode, dtype=np.dtype(np.uint8), shape=(4, 5)), arr)
    assert decode.calls == 3
    path.write_bytes(b"not an npy at all")
    assert np.array_equal(dc.cached_decode(b"x", decode), arr) and decode.calls == 4
    assert np.array_equal(np.load(path), arr)  # rewritten


def test_unwritable_cache_and_off(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(dc.CACHE_ENV, str(blocker / "cache"))  # cannot be created: parent is a file
    decode = Counter(np.zeros(3, dtype=np.uint8))
    assert np.array_equal(dc.cached_decode(b"y", decode), np.zeros(3)) and decode.calls == 1
    monkeypatch.setenv(dc.CACHE_ENV, "off")
    assert dc.cache_dir() is None
    dc.cached_decode(b"y", decode)
    assert decode.calls == 2


def test_read_idx_through_the_cache_equals_a_plain_decode(tmp_path, cache):
    arr = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3)).astype(np.uint8)
    _idx_gz(tmp_path / "a.gz", arr)
    first, second = read_idx(tmp_path / "a.gz"), read_idx(tmp_path / "a.gz")
    assert np.array_equal(first, arr) and np.array_equal(second, arr) and second.shape == (7, 5, 3)
    assert len(list(cache.glob("*.npy"))) == 1
    # the file changes: the new content is read, not the cached array of the old one
    _idx_gz(tmp_path / "a.gz", arr[::-1])
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr[::-1])
    # a cached copy with another shape under the file's key is not served (header check)
    (path,) = [p for p in cache.glob("*.npy") if np.array_equal(np.load(p), arr[::-1])]
    np.save(path, np.zeros((7, 15), dtype=np.uint8))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr[::-1])
