"""Where an output goes: links, FIFOs, sockets and devices, odd names, unwritable places; an
output replaces only what is its own and nothing is half-written.

Through io's writers (write_json, write_csv, save_arrays, atomic_path), the stage scripts as
`python stages/x.py` runs them and the `transferlab-predict` command. The promise: a symbolic
link, a FIFO, a socket or a device node is never replaced nor written through (nor opened by a
reader, which would wait forever); a link loop, an over-long name, a file where a folder
belongs, a refused rename is one line naming the path (from a command: exit code 2, "error:
...", no traceback); earlier outputs stay byte-identical and no temporary is left.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bad_input_helpers import (PREPARE, PRETRAIN, assert_one_line_error, pipeline_files,
                                     prepared_base, pretrained_work, run_entry, snapshot,
                                     temporaries)  # noqa: F401
from tests.conftest import ROOT
from transferlab.errors import UserError, show_path
from transferlab.io import (atomic_path, load_arrays, read_json, read_metadata, save_arrays,
                            write_csv, write_json)


ROOT_USER = os.geteuid() == 0


# ---- links, FIFOs, sockets, devices: never replaced, written through or read -----------------

def special_files(folder: Path) -> dict[str, Path]:
    """A FIFO, a socket, a link to a file, a dangling link, a link to a folder, a link loop,
    and (as root) a private character device, in `folder`."""
    target = folder / "target.txt"
    target.write_text("someone else's\n")
    (folder / "sub").mkdir()
    made = {"fifo": folder / "fifo", "socket": folder / "sock", "link": folder / "link",
            "dangling link": folder / "dangling", "link to a folder": folder / "dirlink",
            "link loop": folder / "loop"}
    os.mkfifo(made["fifo"])
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(made["socket"]))
    server.close()
    made["link"].symlink_to(target)
    made["dangling link"].symlink_to(folder / "nothing")
    made["link to a folder"].symlink_to(folder / "sub")
    made["link loop"].symlink_to(made["link loop"])
    if ROOT_USER:  # a device node of our own, never /dev's: the same driver as /dev/null
        made["device"] = folder / "null"
        os.mknod(made["device"], stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return made


def describe(folder: Path) -> dict:
    """Each entry's kind, link target and content: what must stay as it was."""
    out = {}
    for p in sorted(folder.rglob("*")):
        info = os.lstat(p)
        out[p.name] = (stat.S_IFMT(info.st_mode), os.readlink(p) if p.is_symlink() else None,
                       p.read_bytes() if stat.S_ISREG(info.st_mode) else None)
    return out


@pytest.mark.parametrize("writer", ["json", "csv", "arrays"])
def test_an_output_never_replaces_nor_writes_through_a_special_file(tmp_path, writer):
    folder = tmp_path / "outs"
    folder.mkdir()
    made = special_files(folder)
    before = describe(folder)
    write = {"json": lambda p: write_json(p, {"a": 1}),
             "csv": lambda p: write_csv(p, ["a"], [[1]]),
             "arrays": lambda p: save_arrays(p, {"x": np.zeros(3, np.float32)})}[writer]
    for kind, path in made.items():
        with pytest.raises(UserError) as caught:
            write(path)
        message = str(caught.value)
        assert message.startswith(f"{path} is ") and "nothing was written" in message, message
    for kind, path in made.items():  # through a link loop, as a folder of the output
        if kind == "link loop":
            with pytest.raises(UserError, match=rf"^cannot write {path}/out.json "
                               r"\(Too many levels of symbolic links\): .*link"):
                write_json(path / "out.json", {"a": 1})
    assert describe(folder) == before


def test_a_reader_never_opens_a_fifo_or_follows_a_loop(tmp_path):
    """Opening a FIFO for reading waits for a writer forever: refused before any open."""
    made = special_files(tmp_path)
    for kind in ("fifo", "socket", "link loop", "link to a folder"):
        for read in (load_arrays, read_json, read_metadata):
            with pytest.raises(UserError, match=rf"^{made[kind]} "):
                read(made[kind])


def test_atomic_path_refuses_before_the_block_runs(tmp_path):
    """Refused at once, not after the work: nothing is computed for an output that cannot be."""
    os.mkfifo(tmp_path / "fifo")
    ran = []
    with pytest.raises(UserError, match="named pipe"):
        with atomic_path(tmp_path / "fifo"):
            ran.append(True)
    assert ran == []


def test_a_stage_output_onto_a_symlink_or_fifo_is_one_line(work, capsys, tmp_path):
    """pretrain's model path a link to a file elsewhere, a FIFO, a link loop: one line, the
    link and what it points to untouched, no other output written."""
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(b"not the pipeline's\n")
    model = work / "models/source.safetensors"
    for make, fragment in [(lambda: model.symlink_to(elsewhere), "is a symbolic link"),
                           (lambda: os.mkfifo(model), "named pipe"),
                           (lambda: model.symlink_to(model), "is a symbolic link")]:
        model.unlink()
        make()
        before = snapshot(work, "metrics", "plots")
        code, _, err = run_entry(work, *PRETRAIN, capsys=capsys)
        assert_one_line_error(code, err, "models/source.safetensors", fragments=[fragment])
        assert snapshot(work, "metrics", "plots") == before and temporaries(work) == []
    assert elsewhere.read_bytes() == b"not the pipeline's\n"


def digit_image(work: Path) -> Path:
    image = work / "digit.png"
    if not image.exists():
        from PIL import Image

        Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(image)
    return image


def predict_command(work: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`transferlab-predict MODEL IMAGE --out OUT` in a subprocess, as the console script runs."""
    environ = {k: v for k, v in os.environ.items() if k != "TRANSFERLAB_DEBUG"}
    environ["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-c", "import sys; from transferlab.predict import cli; "
               "sys.argv[0] = 'transferlab-predict'; cli()"]
    return subprocess.run([*command, str(work / "models/source.safetensors"),
                           str(digit_image(work)), "--out", str(out)],
                          capture_output=True, text=True, env=environ, cwd=cwd, timeout=120)


def predict_in_process(work: Path, out: str, cwd: Path, capsys) -> tuple[int, str]:
    """The same command through its entry point (cli: run_stage(main)) in this process."""
    from unittest import mock

    from tests.bad_input_helpers import stage_process_state
    from tests.test_stages import cwd as inside
    from transferlab import predict

    argv = ["transferlab-predict", str(work / "models/source.safetensors"),
            str(digit_image(work)), "--out", out]
    capsys.readouterr()
    code = 0
    with inside(cwd), stage_process_state(), mock.patch.object(sys, "argv", argv):
        try:
            predict.cli()
        except SystemExit as exc:
            code = exc.code
    return code, capsys.readouterr().err


def test_transferlab_predict_out_never_replaces_what_is_not_its_own(work, tmp_path, capsys):
    """`--out` onto a link, a FIFO, a socket, a device (as root: one of our own), a link loop:
    one line each, exit 2, nothing replaced; a new path works. The console command itself in a
    subprocess for the device (or the FIFO), the others through its entry point in-process."""
    folder = tmp_path / "outs"
    folder.mkdir()
    made = special_files(folder)
    before = describe(folder)
    real = made.get("device", made["fifo"]).name
    proc = predict_command(work, Path(real), cwd=folder)
    assert_one_line_error(proc.returncode, proc.stderr, real, fragments=["nothing was written"])
    for out in [p.name for p in made.values()] + ["loop/p.csv", "sub/../loop/p"]:
        code, err = predict_in_process(work, out, folder, capsys)
        assert_one_line_error(code, err, out)
    assert describe(folder) == before
    code, err = predict_in_process(work, "new.csv", folder, capsys)
    assert code == 0, err
    assert (folder / "new.csv").read_text().startswith("path,")


# ---- odd names: over-long, loops, a file where a folder belongs ------------------------------

def test_long_names_loops_and_files_for_folders_are_one_line(tmp_path):
    long = "n" * 300
    cases = {
        tmp_path / long / "out.json": "File name too long",
        tmp_path / f"{long}.json": "File name too long",
        tmp_path / "file.txt" / "out.json": "Not a directory",
        tmp_path / "a\0b.json": "NUL",
    }
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    for path, why in cases.items():
        with pytest.raises(UserError, match=why) as caught:
            write_json(path, {"a": 1})
        assert str(caught.value).startswith(f"cannot write {show_path(path)}"[:500]), caught.value
        with pytest.raises(UserError, match=why):
            load_arrays(path)
        with pytest.raises(UserError, match=why):
            read_json(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_a_name_of_255_bytes_is_written(tmp_path):
    """The longest name a file system allows: the temporary beside it must fit too (its
    `.<name>.<random>.tmp` was 269 bytes, refused as too long)."""
    path = tmp_path / ("é" * 125 + ".json")  # 250 + 5 bytes in UTF-8
    assert len(os.fsencode(path.name)) == 255
    write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1}
    write_json(path, {"a": 2})  # replaced in place, the stale-temporary glob included
    assert read_json(path) == {"a": 2} and len(list(tmp_path.iterdir())) == 1


def test_transferlab_predict_out_with_an_over_long_name_is_one_line(work, tmp_path, capsys):
    out = "x" * 300 + ".csv"
    code, err = predict_in_process(work, out, tmp_path, capsys)
    assert_one_line_error(code, err, out, fragments=["File name too long"])
    assert list(tmp_path.iterdir()) == [tmp_path / "work"]


def test_the_errno_of_every_path_error_has_a_fix():
    from transferlab.errors import path_error

    for code in (errno.ELOOP, errno.ENAMETOOLONG, errno.EACCES, errno.ENOSPC, errno.EROFS,
                 errno.ENOTDIR, errno.EDQUOT, errno.EIO):
        err = path_error(Path("some/file"), OSError(code, os.strerror(code)), "written")
        assert str(err).startswith(f"cannot write some/file ({os.strerror(code)}): ")
        err = path_error(Path("some/file"), OSError(code, os.strerror(code)), "read")
        assert str(err).startswith(f"some/file cannot be read ({os.strerror(code)}): ")


# ---- unwritable outputs: one line, and nothing half-written ----------------------------------

def test_a_hard_linked_output_is_replaced_not_written_into(tmp_path):
    """The other name of the file (a DVC cache entry with cache.type hardlink, say) keeps its
    bytes: an output is a new file moved into place, never the old inode rewritten."""
    cache = tmp_path / "cache"
    cache.write_text("cached\n")
    out = tmp_path / "out.json"
    os.link(cache, out)
    write_json(out, {"a": 1})
    assert cache.read_text() == "cached\n" and read_json(out) == {"a": 1}


@pytest.mark.skipif(ROOT_USER, reason="root writes anywhere")
def test_a_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match="Permission denied"):
            write_json(folder / "out.json", {"a": 1})
    finally:
        folder.chmod(0o700)


def test_an_output_that_cannot_be_written_is_one_line(work, capsys):
    (work / "metrics").rename(work / "metrics.old")
    (work / "metrics").write_text("a file where the metrics folder belongs")
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    assert_one_line_error(code, err, "metrics/scenario.json", fragments=["cannot write"])


def test_a_permission_error_on_rename_is_one_line(work, capsys, monkeypatch):
    real = os.replace

    def refuse(src, dst):
        if str(dst).endswith("scenario.json"):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    before = snapshot(work, "metrics")
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    assert_one_line_error(code, err, "metrics/scenario.json", fragments=["Permission denied"])
    assert snapshot(work, "metrics") == before


def test_an_input_error_inside_an_output_block_names_the_input(tmp_path):
    """A missing input met while an output is being written is about the input, not 'cannot
    write <output>'; a full disk while writing is about the output."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match=rf"^{loop}/x cannot be read \(Too many levels"):
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text((loop / "x").read_text())
    with pytest.raises(UserError, match=r"^cannot write .*out.json \(No space left on device\)"):
        with atomic_path(tmp_path / "out.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == [loop]
