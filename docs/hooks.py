"""MkDocs hooks: serve the benchmark plots from where the benchmarks write them.

The pages link the plots by their path in the repository (``../../benchmarks/results/x.png`` from
``docs/notes/``), which GitHub follows. The site has no files outside ``docs/``, so
``on_files`` adds every ``benchmarks/results/**/*.png`` as if it lay in ``docs/benchmarks/results/``
and ``on_page_markdown`` drops the one ``../`` that leaves ``docs/`` from those links.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path("benchmarks") / "results"


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def on_files(files, config):
    root = _root(config)
    for png in sorted((root / RESULTS).rglob("*.png")):
        files.append(File(png.relative_to(root).as_posix(), src_dir=str(root), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")
    outside = re.escape("../" * (depth + 1) + RESULTS.as_posix() + "/")
    return re.sub(outside, "../" * depth + RESULTS.as_posix() + "/", markdown)
