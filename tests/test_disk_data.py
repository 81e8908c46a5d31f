"""Data larger than memory: files written a block of rows at a time, arrays read from disk on
demand (io.DiskArray, train.DiskImages), and the same bytes and weights either way."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save

from tests.conftest import ROOT, make_images, tiny_params_dict
from transferlab import strategies
from transferlab.images import load_folder
from transferlab.rawdata import save_raw
from transferlab.errors import UserError
from transferlab.io import DiskArray, array_writer, canonical_safetensors, load_arrays, save_arrays
from transferlab.models import Architecture, Classifier, SmallCNN
from transferlab.params import parse_params
from transferlab.train import DiskImages, to_device

RNG = np.random.default_rng(0)
ARRAYS = {"x_train": RNG.integers(0, 256, (37, 1, 5, 5), dtype=np.uint8),
          "y_train": RNG.integers(0, 9, 37),
          "features": RNG.normal(size=(4, 3)).astype(np.float32),
          "halves": RNG.normal(size=(3,)).astype(np.float16),
          "empty": np.zeros((0, 3), np.uint8), "scalar": np.array(3.5),
          "flags": np.array([True, False])}


@pytest.fixture
def on_disk(monkeypatch):
    """Every array a stage loads lazily stays on disk (the limit is 0 bytes)."""
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", "0")


def test_files_written_row_by_row_are_byte_identical_to_safetensors(tmp_path):
    for metadata in ({}, {"classes": '["a"]', "preprocess": "{}"}):
        save_arrays(tmp_path / "a.safetensors", ARRAYS, metadata)
        expected = canonical_safetensors(save(ARRAYS, metadata=metadata))
        assert (tmp_path / "a.safetensors").read_bytes() == expected


def test_a_disk_array_reads_what_numpy_indexing_gives(tmp_path, on_disk):
    save_arrays(tmp_path / "a.safetensors", ARRAYS)
    lazy = load_arrays(tmp_path / "a.safetensors", lazy=True)
    x, ref = lazy["x_train"], ARRAYS["x_train"]
    assert isinstance(x, DiskArray) and x.shape == ref.shape and x.dtype == ref.dtype
    mask = ARRAYS["y_train"] > 4
    for key in (3, -1, slice(2, 9), slice(None), slice(30, 99), [5, 3, 4, 30, 3, 0], mask,
                np.array([], dtype=np.int64)):
        np.testing.assert_array_equal(x[key], ref[key])
    picked = x.take(np.array([9, 1, 2, 20]))  # a lazy selection, and one of it
    np.testing.assert_array_equal(np.asarray(picked), ref[[9, 1, 2, 20]])
    np.testing.assert_array_equal(picked.take(np.array([3, 0]))[:], ref[[20, 9]])
    np.testing.assert_array_equal(x.take(mask)[1:3], ref[mask][1:3])
    assert float(np.asarray(lazy["scalar"])) == 3.5
    np.testing.assert_array_equal(np.asarray(lazy["flags"]), ARRAYS["flags"])
    # writing a lazy array streams it back into the same bytes
    save_arrays(tmp_path / "b.safetensors", lazy)
    assert (tmp_path / "b.safetensors").read_bytes() == (tmp_path / "a.safetensors").read_bytes()


def test_only_arrays_above_the_limit_stay_on_disk(tmp_path, monkeypatch):
    save_arrays(tmp_path / "a.safetensors", ARRAYS)
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", str(100 / 2 ** 20))  # 100 bytes
    lazy = load_arrays(tmp_path / "a.safetensors", lazy=True)
    assert {k for k, v in lazy.items() if isinstance(v, DiskArray)} == {"x_train", "y_train"}
    assert not any(isinstance(v, DiskArray) for v in load_arrays(tmp_path / "a.safetensors").values())
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", "lots")
    with pytest.raises(UserError, match="TRANSFERLAB_RESIDENT_MIB='lots' is not a number"):
        load_arrays(tmp_path / "a.safetensors", lazy=True)


def test_a_truncated_or_lying_file_is_one_clear_error(tmp_path, on_disk):
    path = tmp_path / "a.safetensors"
    save_arrays(path, ARRAYS)
    blob = path.read_bytes()
    path.write_bytes(blob[:-40])
    with pytest.raises(UserError, match="is corrupt .*: delete it and run `dvc repro` again"):
        load_arrays(path, lazy=True)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header["x_train"]["shape"] = [99, 1, 5, 5]  # more rows than its bytes
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + n:])
    with pytest.raises(UserError, match="is corrupt"):
        load_arrays(path, lazy=True)


def test_an_unfinished_writer_publishes_nothing(tmp_path):
    path = tmp_path / "a.safetensors"
    save_arrays(path, {"x": np.ones(4, np.uint8)})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="x: 2 of 6 bytes written"):
        with array_writer(path, {"x": (np.uint8, (6,))}) as write:
            write("x", np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="more rows than its shape"):
        with array_writer(path, {"x": (np.uint8, (2,))}) as write:
            write("x", np.zeros(3, np.uint8))
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["a.safetensors"]


def test_disk_images_behave_like_the_tensor(tmp_path, on_disk):
    x, y = make_images(10)
    save_arrays(tmp_path / "a.safetensors", {"x": x.numpy(), "y": y.numpy()})
    arrays = to_device(load_arrays(tmp_path / "a.safetensors", lazy=True), torch.device("cpu"))
    disk = arrays["x"]
    assert isinstance(disk, DiskImages) and isinstance(arrays["y"], torch.Tensor)
    assert len(disk) == len(x) and disk.shape == x.shape and disk.device == x.device
    idx = torch.tensor([7, 2, 2, 39])
    assert torch.equal(disk[idx], x[idx]) and torch.equal(disk[3:9], x[3:9])
    assert torch.equal(disk.take(idx)[1:3], x[idx][1:3])


def test_training_on_images_on_disk_gives_the_same_weights(tmp_path, monkeypatch):
    """Every neural strategy, with its source, shots and unlabelled pool either in memory or
    read from disk batch by batch: bit-identical weights (same batches, same values)."""
    x_s, y_s = make_images(20, seed=3)
    xv_s, yv_s = make_images(5, seed=4)
    x_t, y_t = make_images(3, seed=1)
    xv_t, yv_t = make_images(4, seed=2)
    save_arrays(tmp_path / "s.safetensors", {"x_train": x_s.numpy(), "y_train": y_s.numpy(),
                                             "x_val": xv_s.numpy(), "y_val": yv_s.numpy()})
    save_arrays(tmp_path / "t.safetensors", {"x_train": x_t.numpy(), "y_train": y_t.numpy(),
                                             "x_val": xv_t.numpy(), "y_val": yv_t.numpy(),
                                             "x_unlabelled": make_images(6, seed=5)[0].numpy()})
    widths = [4, 8, 8]
    torch.manual_seed(123)
    source_model = Classifier(SmallCNN(1, widths), num_classes=4).eval()

    def weights(name, limit):
        monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", limit)
        load = lambda f: to_device(load_arrays(tmp_path / f, lazy=True), torch.device("cpu"))  # noqa: E731
        source, target = load("s.safetensors"), load("t.safetensors")
        unlabelled = target.pop("x_unlabelled")
        assert isinstance(unlabelled, DiskImages) == (limit == "0")
        steps = {"steps": 4} if "steps" in strategies.METHODS[name].options.model_fields else {}
        raw = tiny_params_dict(model={"widths": widths}, transfer={name: steps})
        inputs = strategies.Inputs(target=target, architecture=Architecture("small_cnn", 1, tuple(widths)),
                                   num_classes=4, seed=0, source_model=source_model, source=source,
                                   unlabelled=unlabelled, selection=parse_params(raw).selection)
        torch.manual_seed(0)
        outcome = strategies.run(name, inputs, getattr(parse_params(raw).transfer, name))
        return outcome.model.state_dict()

    for name, method in strategies.METHODS.items():
        if name == "features" or method.name == "source_only":
            continue
        memory, disk = weights(name, "256"), weights(name, "0")
        assert memory.keys() == disk.keys(), name
        assert all(torch.equal(memory[k], disk[k]) for k in memory), name


def vm_rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_pass_over_a_file_on_disk_keeps_memory_bounded(tmp_path, on_disk):
    """160 MiB of images read in random batches: resident memory grows by about one batch, not
    by the file (np.memmap would add every page it touched)."""
    n, shape = 2560, (1, 256, 256)
    with array_writer(tmp_path / "big.safetensors", {"x": (np.uint8, (n, *shape))}) as write:
        for start in range(0, n, 256):
            write("x", np.full((256, *shape), start // 256, np.uint8))
    images = to_device(load_arrays(tmp_path / "big.safetensors", lazy=True), torch.device("cpu"))["x"]
    before, peak = vm_rss_mib(), 0.0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    for batch in order.split(128):
        xb = images[batch]
        assert torch.equal(xb[:, 0, 0, 0], batch // 256)
        peak = max(peak, vm_rss_mib() - before)
    assert peak < 48, f"resident memory grew by {peak:.0f} MiB reading a 160 MiB file"


def test_a_folder_written_lazily_is_the_file_written_eagerly(tmp_path):
    for i in range(6):
        folder = tmp_path / "photos" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    eager = load_folder(tmp_path / "photos", size=16)
    lazy = load_folder(tmp_path / "photos", size=16, lazy=True)
    assert not isinstance(lazy.images, np.ndarray) and lazy.images.shape == eager.images.shape
    save_raw(tmp_path / "eager.safetensors", eager, 16)
    save_raw(tmp_path / "lazy.safetensors", lazy, 16)
    assert (tmp_path / "eager.safetensors").read_bytes() == (tmp_path / "lazy.safetensors").read_bytes()


def test_prepare_with_every_image_on_disk_writes_the_same_files(tmp_path):
    """The embedded default prepared twice: in memory, and with every array above 0 bytes
    aligned into scratch files and streamed: the same bytes, and no scratch file left."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *args, **extra: subprocess.run(  # noqa: E731
        [sys.executable, *args], cwd=ROOT, env={**env, **extra}, check=True, capture_output=True)
    run("stages/download.py", str(tmp_path / "raw"))
    run("stages/prepare.py", str(tmp_path / "raw"), str(tmp_path / "memory"), "--summary",
        str(tmp_path / "m.json"))
    run("stages/prepare.py", str(tmp_path / "raw"), str(tmp_path / "disk"), "--summary",
        str(tmp_path / "d.json"), TRANSFERLAB_RESIDENT_MIB="0")
    names = sorted(os.listdir(tmp_path / "memory"))
    assert names == sorted(os.listdir(tmp_path / "disk")) and len(names) == 5
    for name in names:
        assert (tmp_path / "memory" / name).read_bytes() == (tmp_path / "disk" / name).read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["d.json", "disk", "m.json", "memory", "raw"]


def test_inference_batches_are_bounded_by_image_size_and_change_no_value():
    from transferlab.train import PREDICT_VALUES, predict_logits

    seen = []

    def forward(x):
        seen.append(len(x))
        return x[:, :, 7, 100:103].flatten(1)  # exact values: no reduction order involved

    photos = torch.from_numpy(RNG.integers(0, 256, (23, 3, 512, 512), dtype=np.uint8))
    out = predict_logits(forward, photos)
    assert max(seen) == PREDICT_VALUES // (3 * 512 * 512) == 10 and sum(seen) == 23
    assert torch.equal(out, forward(photos.float().div(255)))
    seen.clear()
    predict_logits(forward, torch.zeros(2000, 1, 16, 16, dtype=torch.uint8))
    assert seen == [1024, 976]  # small images: the batch size asked for, as before


def test_snd_of_a_large_pool_in_row_chunks_equals_the_whole_matrix():
    import torch.nn.functional as F

    from transferlab.train import soft_neighborhood_density

    logits = torch.from_numpy(RNG.normal(size=(9000, 10)).astype(np.float32))
    p = F.normalize(logits.softmax(1), dim=1)
    sim = p @ p.T / 0.05
    sim.fill_diagonal_(float("-inf"))
    q = sim.softmax(1)
    whole = -(q * q.clamp_min(1e-12).log()).sum(1).mean().item()
    assert soft_neighborhood_density(logits) == pytest.approx(whole, rel=1e-6)  # 2 chunks
