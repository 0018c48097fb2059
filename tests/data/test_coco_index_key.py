"""The annotation file's key: its content hashed once per process, and again whenever it changed."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from blendmask.data import coco_index


@pytest.fixture
def hashes(monkeypatch):
    """The paths whose content :func:`coco_index._file_key` hashed, in order."""
    monkeypatch.setattr(coco_index, "_digests", {})
    seen = []
    real = hashlib.file_digest

    def counting(f, digest):
        seen.append(f.name)
        return real(f, digest)

    monkeypatch.setattr(coco_index.hashlib, "file_digest", counting)
    return seen


def _settled(path, text: str):
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))
    time.sleep(0.01)
    return path


def test_a_settled_file_is_hashed_once(tmp_path, hashes, monkeypatch):
    path = _settled(tmp_path / "a.json", "{}")
    monkeypatch.setattr(coco_index, "_SETTLED_NS", 0)  # the ctime of the utime call is recent
    first = coco_index._file_key(str(path))
    assert coco_index._file_key(str(path)) == first and len(hashes) == 1
    assert first[3] == hashlib.sha256(b"{}").hexdigest()


def test_a_changed_file_is_hashed_again(tmp_path, hashes, monkeypatch):
    monkeypatch.setattr(coco_index, "_SETTLED_NS", 0)
    path = _settled(tmp_path / "a.json", "[1]")
    before = coco_index._file_key(str(path))
    stat = path.stat()
    path.write_text("[2]")  # same size; the modification time put back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = coco_index._file_key(str(path))
    assert len(hashes) == 2 and after[3] == hashlib.sha256(b"[2]").hexdigest() != before[3]


def test_a_freshly_written_file_is_not_memoised(tmp_path, hashes):
    path = tmp_path / "a.json"
    path.write_text("{}")
    coco_index._file_key(str(path))
    coco_index._file_key(str(path))
    assert len(hashes) == 2


@pytest.mark.parametrize("reader", ["load_coco_records", "json_file_format"])
def test_the_tree_is_built_with_the_cyclic_collector_paused(tmp_path, monkeypatch, reader):
    import gc

    from tests.helpers.synthetic_coco import write_polygon_coco

    monkeypatch.setenv("BLENDMASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(coco_index, "_recent", coco_index.OrderedDict())
    path = write_polygon_coco(tmp_path / "d", 3)
    during = []
    real = coco_index.build_records
    monkeypatch.setattr(coco_index, "build_records", lambda *a, **k: during.append(gc.isenabled()) or real(*a, **k))
    getattr(coco_index, reader)(path)
    assert during == [False] and gc.isenabled()
