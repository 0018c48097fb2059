"""The documentation's Python examples run, and the README's links and CI contract hold.

Every fenced ```` ```python ```` block of ``README.md`` and ``docs/**/*.md`` is executed on its
own, in a fresh namespace and an empty working directory, as a reader would paste it. A block may
be left out only with an HTML comment on the line before it that says why, e.g.
``<!-- not run: needs a converted AdelaiDet weights file -->``.
"""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>\S.*\S) -->$")


def _python_blocks(path: Path):
    """``(line number, code, reason it is not run or None)`` of every ```python block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            before = next((line.strip() for line in reversed(lines[:start - 1]) if line.strip()), "")
            match = NOT_RUN.match(before)
            blocks.append((start, "\n".join(body) + "\n", match["reason"] if match else None))
        i += 1
    return blocks


EXAMPLES = [(path, line, code, reason) for path in DOC_FILES for line, code, reason in _python_blocks(path)]


def _id(example):
    path, line = example[0], example[1]
    return f"{path.relative_to(ROOT).as_posix()}:{line}"


def test_the_readme_and_the_docs_have_examples_that_run():
    run = [e for e in EXAMPLES if e[3] is None]
    assert any(path.name == "README.md" for path, *_ in run), "the README has no Python example that runs"
    assert any(path.parent.name == "tutorials" for path, *_ in run), "the tutorials have no Python example that runs"


def test_a_mark_that_is_not_a_valid_not_run_comment_is_refused():
    """A misspelt mark would silently run (and fail) or be ignored: every comment right before a
    python block must be the exact ``<!-- not run: reason -->`` form."""
    bad = []
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() == "```python" and i and lines[i - 1].strip().startswith("<!--"):
                if not NOT_RUN.match(lines[i - 1].strip()):
                    bad.append(f"{path.relative_to(ROOT)}:{i}")
    assert not bad, f"malformed 'not run' marks: {bad}"


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e[3] is None], ids=_id)
def test_example_runs(example, tmp_path, monkeypatch):
    path, line, code, _ = example
    monkeypatch.chdir(tmp_path)
    # Blank lines keep the traceback's line numbers those of the markdown file.
    source = "\n" * line + code
    exec(compile(source, str(path), "exec"), {"__name__": "__doc_example__"})


def _relative_links(text: str):
    """``(file, anchor)`` of every relative link of a markdown text (anchor "" when none)."""
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
            path, _, anchor = target.partition("#")
            yield path, anchor


def _anchors(markdown_file: Path) -> set:
    """The heading ids of a markdown file, as GitHub and MkDocs make them."""
    anchors, fence = set(), False
    for line in markdown_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"^#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s+", "-", re.sub(r"[^\w\- ]", "", title)).strip("-"))
    return anchors


def test_the_readme_links_point_to_files_and_headings_that_exist():
    """mkdocs checks the links of docs/; the README is outside it, so it is checked here."""
    broken = []
    for path, anchor in _relative_links((ROOT / "README.md").read_text(encoding="utf-8")):
        target = ROOT / path
        if not target.exists() or (anchor and anchor not in _anchors(target)):
            broken.append(f"{path}#{anchor}" if anchor else path)
    assert not broken, f"README.md has broken links: {broken}"


def test_ci_finds_the_test_command_in_the_readme():
    """`.ci/run` runs the ```bash block after the line "Install everything and run the tests"."""
    ci = (ROOT / ".ci" / "run").read_text()
    awk = re.search(r"awk '([^']+)' README\.md", ci)
    assert awk, ".ci/run no longer extracts the test command with awk"
    command = subprocess.run(["awk", awk.group(1), "README.md"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    assert command.startswith("bash .ci/install && ") and "pytest" in command, command
