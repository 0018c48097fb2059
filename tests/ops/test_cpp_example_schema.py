"""The C++ example's header comment shows the schema the op library registers today."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from blendmask import _extension

MAIN_CPP = Path(__file__).resolve().parents[2] / "examples" / "cpp" / "main.cpp"


def _commented_schema(text: str) -> str:
    """The ``blendmask::blend(...) -> Tensor`` schema of the header comment, on one line."""
    header = "\n".join(line[2:].strip() for line in text.splitlines() if line.startswith("//"))
    found = re.search(r"blendmask::(blend\(.*?\) -> \w+)", " ".join(header.split()), re.S)
    assert found, f"{MAIN_CPP} has no blendmask::blend schema in its comment"
    return found.group(1).replace("( ", "(")


@pytest.mark.skipif(not _extension.extension_loaded(), reason="the compiled extension is not built")
def test_the_cpp_example_comment_matches_the_registered_schema():
    registered = str(torch.ops.blendmask.blend.default._schema).removeprefix("blendmask::")
    assert _commented_schema(MAIN_CPP.read_text()) == registered


def test_the_schema_reader_sees_a_stale_comment():
    stale = "// registers\n//   blendmask::blend(Tensor bases, int output_size,\n//     str top_interp) -> Tensor\n"
    assert _commented_schema(stale) == "blend(Tensor bases, int output_size, str top_interp) -> Tensor"
