"""Weights files that are not weights: a pickle that would run code is named as such."""
import os
import pickle

import pytest

from blendmask.serialization import WeightsFileError, load_torch_file


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_that_would_run_code_is_named(tmp_path, protocol):
    path = tmp_path / "model.pth"
    path.write_bytes(pickle.dumps({"model": _RunsCode()}, protocol=protocol))
    with pytest.raises(WeightsFileError) as error:
        load_torch_file(path)
    message = str(error.value)
    assert f"it is a Python pickle that would import and call {os.system.__module__}.system" in message
    assert "random bytes" not in message


def _zip_bomb(tmp_path, inflated_bytes):
    """A torch.save file whose tensor record is replaced by deflated zeros of ``inflated_bytes``."""
    import zipfile

    import torch

    honest = tmp_path / "honest.pth"
    torch.save({"model": {"w": torch.zeros(4)}}, honest)
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(honest) as source, zipfile.ZipFile(bomb, "w") as target:
        for record in source.infolist():
            if record.filename.endswith("/data/0"):
                target.writestr(record.filename, bytes(inflated_bytes), compress_type=zipfile.ZIP_DEFLATED)
            else:
                target.writestr(record, source.read(record))
    return bomb


def test_a_zip_bomb_is_refused_before_anything_is_inflated(tmp_path, monkeypatch):
    import zipfile

    bomb = _zip_bomb(tmp_path, 64 << 20)

    def no_reading(*args, **kwargs):
        raise AssertionError("a record was read")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    with pytest.raises(WeightsFileError) as error:
        load_torch_file(bomb)
    message = str(error.value)
    assert "its record 'honest/data/0' would inflate from" in message and f"to {64 << 20} bytes" in message


def test_small_compressed_records_are_left_to_the_other_checks(tmp_path):
    bomb = _zip_bomb(tmp_path, 1 << 16)  # inflates 64 KiB: no memory threat; the wrong content is refused
    with pytest.raises(WeightsFileError, match="not a file written by torch.save"):
        load_torch_file(bomb)
