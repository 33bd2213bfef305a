"""Every Python block in docs/ is an excerpt of a file that CI runs (examples/, bench/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _lines(text: str) -> str:
    """The code without layout: no whitespace, no trailing commas (formatters move both)."""
    return re.sub(r",([)\]}])", r"\1", re.sub(r"\s+", "", text))


SOURCES = {
    path: _lines(path.read_text())
    for folder in ("examples", "bench")
    for path in sorted((ROOT / folder).glob("*.py"))
}
BLOCKS = [
    pytest.param(block, id=f"{doc.name}:{number}")
    for doc in sorted((ROOT / "docs").glob("*.md"))
    for number, block in enumerate(BLOCK.findall(doc.read_text()), 1)
]


@pytest.mark.parametrize("block", BLOCKS)
def test_doc_block_is_an_excerpt_of_code_that_runs(block: str) -> None:
    """The block appears, layout aside, in an example or benchmark that CI runs."""
    wanted = _lines(block)
    assert any(wanted in source for source in SOURCES.values()), block
