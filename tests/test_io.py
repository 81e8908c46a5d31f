"""Atomic outputs: a failed or killed writer never leaves a half-written file in place."""

import pytest

from transferlab.errors import UserError
from transferlab.io import atomic_path, write_json


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


def test_an_output_never_replaces_what_the_command_read(tmp_path, capsys):
    """A stage run by hand with an output path that is one of its inputs, or the folder of one
    (`stages/prepare.py data/raw data/raw`), stops with one line and leaves the input as it was;
    the next command in the same process starts with no inputs."""
    from transferlab.launcher import run_stage

    data = tmp_path / "raw"
    data.mkdir()
    (data / "images.csv").write_text("1,2,3\n")

    def copy_to(out):
        def main(argv):
            text = (data / "images.csv").read_text()
            if out.suffix:
                write_json(out, {"copied": text})
            else:  # a folder output
                with atomic_path(out) as tmp:
                    tmp.mkdir()
                    (tmp / "copied.csv").write_text(text)
        return main

    for out in (data / "images.csv", data):
        with pytest.raises(SystemExit) as exit_:
            run_stage(copy_to(out))
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {out} is also ") and "give the output another path" in err
        assert [p.name for p in data.iterdir()] == ["images.csv"]
        assert (data / "images.csv").read_text() == "1,2,3\n"
    run_stage(copy_to(tmp_path / "copy"))
    assert (tmp_path / "copy" / "copied.csv").read_text() == "1,2,3\n"

    def rewrite(argv):  # reads nothing: the previous command's reads do not count
        write_json(data / "images.csv", {"new": True})

    run_stage(rewrite)
    assert "new" in (data / "images.csv").read_text()
