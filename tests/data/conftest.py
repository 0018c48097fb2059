"""The data tests keep the records cache in a temporary directory, never the user's."""
import pytest


@pytest.fixture(autouse=True)
def _records_cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BLENDMASK_CACHE", str(tmp_path_factory.mktemp("records-cache")))
