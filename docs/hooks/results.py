"""MkDocs hook: pages show benchmark results straight from the files the benchmark scripts commit.

A line ``<!-- activelab:results benchmarks/results/NAME.md -->`` in a page is replaced at build time by that file
(its own top-level title dropped), so every number on the site is the script's output as committed, never a copy
edited by hand. A marker naming a missing file fails ``mkdocs build --strict`` (a warning), instead of publishing a
page without its numbers.

Registered in mkdocs.yml under ``hooks:``; excluded from the site itself (``exclude_docs``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- activelab:results (\S+) -->$", re.MULTILINE)
log = logging.getLogger("mkdocs.hooks.results")


def include(path: str, page: str) -> str:
    source = ROOT / path
    if not source.is_file() or not path.startswith("benchmarks/results/"):
        log.warning("%s: results file %s not found (only benchmarks/results/ files can be included)", page, path)
        return f"*(missing: {path})*"
    lines = source.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip() + f"\n\n(Included from `{path}`.)"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (mkdocs hook signature)
    return MARKER.sub(lambda m: include(m.group(1), page.file.src_path), markdown)
