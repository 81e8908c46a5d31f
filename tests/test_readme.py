"""The README's and the docs' results are the committed metrics, not numbers typed by hand."""

import re

import pytest

from scripts.sync_readme import blocks, pages, sync
from tests.conftest import ROOT


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_generated_block_is_the_committed_result(page):
    text = page.read_text()
    assert sync(text) == text, f"{page.relative_to(ROOT)} is out of date: run `make readme`"


@pytest.mark.parametrize("name", sorted(blocks()))
def test_every_generated_block_appears_somewhere(name):
    assert any(f"<!-- {name}:start -->" in p.read_text() for p in pages()), name


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


def test_links_between_pages_resolve():
    for page in pages():
        for link in re.findall(r"\]\(([^)#:]+\.(?:md|png))", page.read_text()):
            assert (page.parent / link).is_file(), f"{page.name} links to {link}: not found"
