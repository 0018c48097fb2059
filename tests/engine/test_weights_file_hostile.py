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
