"""read_json_file parses with the cyclic garbage collector paused, and leaves it as it was."""
from __future__ import annotations

import gc
import json

import pytest

from blendmask.data import json_files


@pytest.fixture
def collector_during_parse(monkeypatch):
    """Whether the cyclic collector was enabled during each ``json.load`` of ``read_json_file``."""
    seen = []
    real = json.load

    def recording(f):
        seen.append(gc.isenabled())
        return real(f)

    monkeypatch.setattr(json_files.json, "load", recording)
    return seen


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_during_the_parse_and_restored(tmp_path, collector_during_parse, enabled):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [{"id": 1}]}))
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        assert json_files.read_json_file(path) == {"images": [{"id": 1}]}
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
    assert collector_during_parse == [False]


def test_the_collector_is_restored_after_broken_json(tmp_path, collector_during_parse):
    path = tmp_path / "a.json"
    path.write_text('{"images": [')
    assert gc.isenabled()
    with pytest.raises(ValueError, match="broken JSON at line 1"):
        json_files.read_json_file(path)
    assert gc.isenabled() and collector_during_parse == [False]
