"""No tracked text file keeps the markers of an unresolved merge (Markdown renders them silently)."""
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKERS = ("<" * 7 + " ", ">" * 7 + " ")  # not "=======": a Markdown heading underline


def test_no_tracked_file_holds_merge_conflict_markers():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    found = []
    for name in filter(None, files):
        path = REPO / name.decode()
        if path.suffix not in {".py", ".md", ".toml", ".yml", ".yaml", ".cpp", ".cu", ".h", ".cuh", ".txt", ".cfg", ""}:
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue
        found += [f"{name.decode()}:{i}" for i, line in enumerate(lines, 1) if line.startswith(MARKERS)]
    assert not found, f"merge conflict markers in {found}"
