"""transferlab/registry.py: the discovery the backbone and dataset registries share."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from transferlab.registry import discover


@dataclass(frozen=True)
class Item:
    name: str
    family: str = ""


def make_package(tmp_path, monkeypatch, modules: dict[str, str]) -> str:
    package = tmp_path / "fakereg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, body in modules.items():
        (package / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("fakereg")]:
        monkeypatch.delitem(sys.modules, name)
    return str(package)


ITEM = "from tests.test_registry_discovery import Item\n"


def test_items_in_module_order_with_their_family(tmp_path, monkeypatch):
    path = make_package(tmp_path, monkeypatch, {
        "b_family": ITEM + "THINGS = (Item('z'), Item('y'))\n",
        "a_family": ITEM + "THINGS = (Item('x'),)\n",
        "helper": "VALUE = 1\n"})  # declares none: not an error
    found = discover("fakereg", [path], "THINGS", "thing")
    assert list(found) == ["x", "z", "y"]
    assert [i.family for i in found.values()] == ["a_family", "b_family", "b_family"]


def test_a_name_declared_twice_names_both_modules(tmp_path, monkeypatch):
    path = make_package(tmp_path, monkeypatch, {
        "one": ITEM + "THINGS = (Item('x'),)\n", "two": ITEM + "THINGS = (Item('x'),)\n"})
    with pytest.raises(ValueError, match=r"thing x is declared twice \(one and two\)"):
        discover("fakereg", [path], "THINGS", "thing")
