"""Atomic outputs: a failed or killed writer never leaves a half-written file in place."""

import pytest

from transferlab.io import UserError, atomic_path, write_json


def test_a_failed_block_leaves_the_earlier_output_intact(tmp_path):
    out = tmp_path / "metrics.json"
    write_json(out, {"accuracy": 0.9})
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert out.read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_directory_output_is_replaced_whole(tmp_path):
    out = tmp_path / "prepared"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "old.txt").write_text("old")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_a_temporary_left_by_a_killed_run_is_cleaned_up(tmp_path):
    stale = tmp_path / ".model.safetensors.abc123.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_text("partial")
    with atomic_path(tmp_path / "model.safetensors") as tmp:
        tmp.write_text("complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_file_output_never_replaces_a_folder_nor_a_folder_a_file(tmp_path):
    """`--out photos/` (the folder being read) must not turn the folder into a CSV."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(UserError, match="photos is a folder and this output is a file"):
        write_json(folder, {"accuracy": 0.9})
    assert [p.name for p in folder.iterdir()] == ["cat.jpg"]
    single = tmp_path / "notes.txt"
    single.write_text("mine")
    with pytest.raises(UserError, match="notes.txt is a file and this output is a folder"):
        with atomic_path(single) as tmp:
            tmp.mkdir()
    assert single.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]
