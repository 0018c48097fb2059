"""The validated-records cache: hit, miss on a changed file, rebuild of a bad cache file with one
warning, an unwritable directory, two processes building at once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from blendmask.data import coco_cache, coco_index
from blendmask.data.coco_cache import CacheWarning

from tests.helpers.synthetic_coco import count_json_parses, write_polygon_coco

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache directory for every file size; returns ``(cache dir, list of parsed files)``."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("BLENDMASK_CACHE", str(directory))
    monkeypatch.setattr(coco_cache, "CACHE_MIN_BYTES", 0)
    return directory, count_json_parses(monkeypatch)


def _load_fresh(path):
    """Records as a new process would get them (no in-process memory of earlier reads)."""
    coco_index._recent.clear()
    return coco_index.load_coco_records(path)


def _cache_file(directory: Path) -> Path:
    (found,) = directory.glob("coco-records-*.npz")
    return found


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.arrays().values(), b.arrays().values()))


def test_hit_reads_the_cache_instead_of_the_file(tmp_path, cache):
    directory, parsed = cache
    path = write_polygon_coco(tmp_path / "d", 20)
    first = _load_fresh(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        second = _load_fresh(path)
    assert parsed == [str(path)] and _cache_file(directory).is_file() and _same(first, second)
    assert not list(directory.glob(".coco-records-*"))  # no temporary file left behind


def test_changed_file_is_a_miss(tmp_path, cache):
    directory, parsed = cache
    path = write_polygon_coco(tmp_path / "d", 20)
    _load_fresh(path)
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "renamed.jpg"
    path.write_text(json.dumps(data))
    with pytest.warns(CacheWarning, match="another version"):
        records = _load_fresh(path)
    assert records.file_name(0) == "renamed.jpg" and len(parsed) == 2
    _load_fresh(path)
    assert len(parsed) == 2  # rebuilt cache is used


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "flipped"])
def test_bad_cache_file_is_rebuilt_with_one_warning(tmp_path, cache, damage):
    directory, parsed = cache
    path = write_polygon_coco(tmp_path / "d", 20)
    good = _load_fresh(path)
    cache_file = _cache_file(directory)
    content = cache_file.read_bytes()
    if damage == "truncated":
        cache_file.write_bytes(content[: len(content) // 2])
    elif damage == "garbage":
        cache_file.write_bytes(b"not a zip file at all")
    elif damage == "foreign":
        with cache_file.open("wb") as f:
            np.savez(f, image_ids=np.arange(3))
    else:  # one byte of the coordinates changed: the zip CRC refuses it
        offset = content.index(good.coordinates.tobytes()[:64]) + 32
        cache_file.write_bytes(content[:offset] + bytes([content[offset] ^ 0xFF]) + content[offset + 1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = _load_fresh(path)
    assert [type(w.message) for w in caught] == [CacheWarning], [str(w.message) for w in caught]
    assert _same(records, good) and len(parsed) == 2
    _load_fresh(path)
    assert len(parsed) == 2


def test_unwritable_cache_directory_is_a_warning(tmp_path, cache, monkeypatch):
    _, parsed = cache
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("BLENDMASK_CACHE", str(blocker / "cache"))
    path = write_polygon_coco(tmp_path / "d", 5)
    with pytest.warns(CacheWarning) as caught:
        records = _load_fresh(path)
    assert len(caught) == 1 and records.num_images == 5


def test_cache_can_be_switched_off(tmp_path, cache, monkeypatch):
    directory, parsed = cache
    monkeypatch.setenv("BLENDMASK_CACHE", "off")
    path = write_polygon_coco(tmp_path / "d", 5)
    _load_fresh(path)
    _load_fresh(path)
    assert len(parsed) == 2 and not directory.exists()


_CHILD = """
import sys
from blendmask.data import coco_cache, coco_index
coco_cache.CACHE_MIN_BYTES = 0
parsed = []
real = coco_index.read_json_file
coco_index.read_json_file = lambda path, **kw: parsed.append(path) or real(path, **kw)
sys.stdin.readline()  # start together
records = coco_index.load_coco_records(sys.argv[1])
print(len(parsed), records.num_annotations, int(records.coordinates.sum() * 100))
"""


def test_two_processes_building_at_once_parse_once(tmp_path, cache):
    directory, _ = cache
    path = write_polygon_coco(tmp_path / "d", 400)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate("go\n", timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    results = [out.split() for out, _ in outputs]
    assert sorted(int(r[0]) for r in results) == [0, 1]  # one built, the other waited and read
    assert results[0][1:] == results[1][1:]
    assert _cache_file(directory).is_file()
