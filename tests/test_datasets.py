"""Dataset sources: embedded, torchvision (fixtures in the real file formats, md5-verified) and
image folders; every failure is one line naming the path. No test touches the network: urlopen
is replaced for the whole module, and a test that needs a download serves the bytes itself."""

from __future__ import annotations

import io
import socket
import urllib.request
from pathlib import Path
from urllib.error import URLError

import numpy as np
import typing

import pytest
import torchvision.datasets as tv
from PIL import Image

from tests.fixtures_formats import (CIFAR_NAMES, random_images, trust_fixture_md5s, write_cifar10,
                                    write_mnist, write_svhn, write_usps)
from transferlab.datasets import fetch
from transferlab.datasets.torchvision_sets import DOWNLOAD_TIMEOUT_S, expected_files
from transferlab.images import FOLDER_SIZE, read_image
from transferlab.rawdata import DIGITS, RawDataset, load_raw, save_raw
from transferlab.errors import UserError


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every URL the code opens, recorded; opening one fails as it does without network."""
    opened = []

    def urlopen(request, *args, **kwargs):
        opened.append(getattr(request, "full_url", request))
        raise URLError("[Errno -2] Name or service not known (network disabled in tests)")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return opened


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


# --- embedded -----------------------------------------------------------------------------

def test_embedded_datasets_are_digits_with_their_pixel_range():
    mnist, uci = fetch("mnist_5k"), fetch("uci_digits")
    assert mnist.images.shape == (5000, 28, 28) and mnist.max_value == 255
    assert uci.images.shape == (1797, 8, 8) and uci.max_value == 16 and uci.images.max() == 16
    for data in (mnist, uci):
        assert data.images.dtype == np.uint8 and data.labels.dtype == np.int64
        assert data.classes == DIGITS and set(data.labels.tolist()) == set(range(10))


# --- torchvision formats ------------------------------------------------------------------

@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_gz_files_load_through_torchvision(tmp_path, monkeypatch, offline, name, folder):
    images, labels = write_mnist(tmp_path, folder, n=30)
    trust_fixture_md5s(monkeypatch, name, tmp_path)
    data = fetch(name, cache_dir=tmp_path)  # download=True: nothing to download, so no network
    assert data.images.shape == (30, 28, 28) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.labels.dtype == np.int64 and data.max_value == 255
    assert data.classes == (DIGITS if name == "mnist" else tuple(tv.FashionMNIST.classes))
    assert data.classes[0] == ("0" if name == "mnist" else "T-shirt/top")
    assert offline == []


def test_cifar10_pickled_batches_give_rgb_images_and_label_names(tmp_path, monkeypatch, offline):
    images, labels = write_cifar10(tmp_path, per_batch=6)
    trust_fixture_md5s(monkeypatch, "cifar10", tmp_path)
    data = fetch("cifar10", cache_dir=tmp_path)
    assert data.images.shape == (30, 32, 32, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, images)  # (R, G, B) planes back to HWC
    np.testing.assert_array_equal(data.labels, labels)
    assert data.classes == tuple(CIFAR_NAMES) and data.max_value == 255
    assert offline == []


def test_usps_libsvm_values_in_minus_one_to_one_become_0_to_255(tmp_path, monkeypatch, offline):
    levels = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], np.float32)  # -> 0, 63, 127, 191, 255
    rng = np.random.default_rng(0)
    floats = rng.choice(levels, size=(20, 16, 16))
    labels = np.arange(20) % 10
    write_usps(tmp_path, floats, labels)
    trust_fixture_md5s(monkeypatch, "usps", tmp_path)
    data = fetch("usps", cache_dir=tmp_path)
    assert data.images.shape == (20, 16, 16) and data.images.dtype == np.uint8
    expected = np.select([floats == v for v in levels], [0, 63, 127, 191, 255]).astype(np.uint8)
    np.testing.assert_array_equal(data.images, expected)  # torchvision: floor((v + 1) / 2 * 255)
    np.testing.assert_array_equal(data.labels, labels)  # file labels 1..10 -> digits 0..9
    assert data.classes == DIGITS and offline == []


def test_svhn_mat_file_gives_hwc_images_and_digit_0_for_label_10(tmp_path, monkeypatch, offline):
    images, labels = write_svhn(tmp_path, n=20)
    trust_fixture_md5s(monkeypatch, "svhn", tmp_path)
    data = fetch("svhn", cache_dir=tmp_path)
    assert data.images.shape == (20, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.images.flags.c_contiguous
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert 0 in data.labels and data.classes == DIGITS and offline == []


def test_expected_files_are_where_torchvision_looks(tmp_path):
    mnist = expected_files("mnist", tmp_path)
    assert [f.path for f in mnist] == [tmp_path / "MNIST" / "raw" / f for f, _ in tv.MNIST.resources]
    assert mnist[0].url == tv.MNIST.mirrors[0] + "train-images-idx3-ubyte.gz"
    assert mnist[0].md5 == tv.MNIST.resources[0][1]
    cifar = expected_files("cifar10", tmp_path)
    assert [f.path.name for f in cifar] == [f"data_batch_{i}" for i in range(1, 6)] + [
        "test_batch", "batches.meta"]
    assert {f.url for f in cifar} == {tv.CIFAR10.url}
    assert [f.path for f in expected_files("usps", tmp_path)] == [tmp_path / "usps.bz2"]
    assert [f.path for f in expected_files("svhn", tmp_path)] == [tmp_path / "train_32x32.mat"]


def test_the_cache_dir_defaults_to_TRANSFERLAB_DATA(tmp_path, monkeypatch):
    write_svhn(tmp_path, n=10)
    trust_fixture_md5s(monkeypatch, "svhn", tmp_path)
    monkeypatch.setenv("TRANSFERLAB_DATA", str(tmp_path))
    assert fetch("svhn").images.shape == (10, 32, 32, 3)
    monkeypatch.setenv("TRANSFERLAB_DATA", str(tmp_path / "elsewhere"))
    assert str(tmp_path / "elsewhere" / "train_32x32.mat") in one_line_error(fetch, "svhn")


class ServedFile(io.BytesIO):
    """What urlopen returns, as far as torchvision's downloader reads it."""

    def __init__(self, url: str, blob: bytes):
        super().__init__(blob)
        self.url, self.length = url, len(blob)


def test_a_download_goes_through_torchvision_and_is_verified(tmp_path, monkeypatch):
    server = tmp_path / "server"
    images, labels = write_mnist(server, n=20)
    trust_fixture_md5s(monkeypatch, "mnist", server)
    served = (server / "MNIST" / "raw").iterdir()
    blobs = {tv.MNIST.mirrors[0] + p.name: p.read_bytes() for p in served}
    timeouts = []

    def urlopen(request, *args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        return ServedFile(request.full_url, blobs[request.full_url])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    cache, timeout_before = tmp_path / "cache", socket.getdefaulttimeout()
    data = fetch("mnist", cache_dir=cache)
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert (cache / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # unpacked by torchvision
    assert timeouts and set(timeouts) == {DOWNLOAD_TIMEOUT_S}  # a silent network can't hang it
    assert socket.getdefaulttimeout() == timeout_before


# --- torchvision failures -----------------------------------------------------------------

def test_offline_missing_file_names_the_file_its_folder_and_url(tmp_path, offline):
    message = one_line_error(fetch, "mnist", cache_dir=tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    url = "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
    assert f"{raw / 'train-images-idx3-ubyte.gz'} is missing (download failed: " in message
    assert f"download {url} into {raw}/" in message
    assert "also missing: train-labels-idx1-ubyte.gz, t10k-images" in message
    assert offline, "download=True must have tried the network"


def test_offline_missing_archive_member_says_which_archive_to_extract(tmp_path):
    message = one_line_error(fetch, "cifar10", cache_dir=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert f"download {tv.CIFAR10.url} and extract it in {tmp_path}/" in message


def test_download_false_never_opens_a_url(tmp_path, offline):
    message = one_line_error(fetch, "usps", cache_dir=tmp_path, download=False)
    assert f"{tmp_path / 'usps.bz2'} is missing (downloads are off)" in message
    assert tv.USPS.split_list["train"][0] in message and offline == []


def test_a_corrupt_byte_fails_the_md5_before_loading(tmp_path, monkeypatch, offline):
    write_cifar10(tmp_path)
    trust_fixture_md5s(monkeypatch, "cifar10", tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    blob = bytearray(batch.read_bytes())
    blob[-10] ^= 0xFF
    batch.write_bytes(bytes(blob))
    message = one_line_error(fetch, "cifar10", cache_dir=tmp_path)
    expected_md5 = tv.CIFAR10.train_list[2][1]
    assert message.startswith(f"{batch} has md5 ") and f"expected {expected_md5}" in message
    assert "delete it and run again" in message and tv.CIFAR10.url in message
    assert offline == []  # torchvision was not left to re-download over it


def test_the_official_md5s_reject_fixture_files(tmp_path):
    write_svhn(tmp_path, n=10)  # no md5 patch: torchvision's table is the real one
    message = one_line_error(fetch, "svhn", cache_dir=tmp_path)
    assert f"expected {tv.SVHN.split_list['train'][2]}" in message


def test_an_unpacked_mnist_file_must_match_its_verified_archive(tmp_path, monkeypatch):
    write_mnist(tmp_path, n=10)
    trust_fixture_md5s(monkeypatch, "mnist", tmp_path)
    fetch("mnist", cache_dir=tmp_path)  # torchvision unpacks the .gz files
    unpacked = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    blob = bytearray(unpacked.read_bytes())
    blob[100] ^= 0xFF
    unpacked.write_bytes(bytes(blob))
    message = one_line_error(fetch, "mnist", cache_dir=tmp_path)
    assert message.startswith(f"{unpacked} differs from the verified train-images-idx3-ubyte.gz")


def test_unknown_names_and_a_folder_without_root_fail_in_one_line():
    from transferlab.datasets import NAMES

    assert f"choose one of {', '.join(NAMES)}" in one_line_error(fetch, "mnits")
    assert "needs a root" in one_line_error(fetch, "folder")


# --- image folders ------------------------------------------------------------------------

def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_a_folder_of_mixed_images_becomes_one_rgb_array(tmp_path):
    rng = np.random.default_rng(0)
    exact = rng.integers(0, 256, (FOLDER_SIZE, FOLDER_SIZE, 3), dtype=np.uint8)
    save(tmp_path / "cat" / "a.png", exact)                                       # colour, 64x64
    save(tmp_path / "cat" / "b.jpg", np.full((40, 90, 3), (200, 30, 10), np.uint8), quality=95)
    save(tmp_path / "cat" / ".hidden.png", exact)                                 # skipped
    save(tmp_path / "dog" / "c.png", np.full((17, 23), 77, np.uint8))             # grey, upscaled
    save(tmp_path / "dog" / "d.bmp", np.full((200, 120), 5, np.uint8))            # grey, shrunk
    save(tmp_path / ".git" / "e.png", exact)                                      # not a class
    data = fetch("folder", root=tmp_path)
    assert data.images.shape == (4, FOLDER_SIZE, FOLDER_SIZE, 3) and data.images.dtype == np.uint8
    assert data.classes == ("cat", "dog") and data.labels.tolist() == [0, 0, 1, 1]
    assert data.max_value == 255
    np.testing.assert_array_equal(data.images[0], exact)            # same size: pixels unchanged
    assert np.abs(data.images[1].astype(int) - (200, 30, 10)).max() <= 3  # JPEG, resized
    assert (data.images[2] == 77).all() and (data.images[3] == 5).all()   # grey -> equal R=G=B


def test_a_photo_keeps_its_aspect_ratio_shorter_side_then_centre_square(tmp_path):
    """A 300x200 photo whose left and right 50-pixel bands are red: the centre 200x200 square is
    kept (no red), then resized: torchvision's Resize(size) + CenterCrop(size) on the same PIL
    image gives the same pixels to within resampling rounding."""
    from torchvision.transforms import v2

    photo = np.zeros((200, 300, 3), np.uint8)
    photo[:, :50] = photo[:, 250:] = (255, 0, 0)
    photo[:, 50:250, 1] = np.arange(200, dtype=np.uint8)[None, :]  # a green ramp, left to right
    path = save(tmp_path / "a" / "p.png", photo)
    save(tmp_path / "b" / "q.png", photo)
    data = fetch("folder", root=tmp_path, size=64)
    assert data.images.shape == (2, 64, 64, 3)
    # the red side bands are cropped away (the edge columns blend in a little, as after
    # torchvision's Resize: the filter reaches past the square's edge)
    assert data.images[0][:, 1:-1, 0].max() <= 2
    ramp = data.images[0][32, 1:-1, 1].astype(int)
    assert ramp[0] < 10 and ramp[-1] > 185 and (np.diff(ramp) >= 0).all()  # the whole ramp
    reference = np.asarray(v2.CenterCrop(64)(v2.Resize(64)(Image.open(path).convert("RGB"))))
    assert np.abs(reference.astype(int) - data.images[0]).max() <= 2
    portrait = save(tmp_path / "c" / "r.png", photo.transpose(1, 0, 2).copy())  # 200 wide, 300 high
    assert read_image(portrait, "RGB", 64)[1:-1, :, 0].max() <= 2  # top and bottom bands cropped


def test_an_all_grey_folder_under_train_stays_grayscale(tmp_path):
    root = tmp_path / "root"
    save(root / "train" / "b" / "x.png", np.full((10, 10), 9, np.uint8))
    save(root / "train" / "a" / "y.png", np.full((30, 20), 250, np.uint8))
    save(root / "train" / "a" / "z.png", (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257))
    save(root / "train" / "b" / "w.gif", np.full((12, 12), 60, np.uint8))  # palette, grey entries
    save(root / "test" / "a" / "t.png", np.zeros((5, 5), np.uint8))  # not read: train exists
    data = fetch("folder", root=root)
    assert data.images.shape == (4, FOLDER_SIZE, FOLDER_SIZE) and data.classes == ("a", "b")
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert (data.images[0] == 250).all() and (data.images[2] == 60).all()
    assert (data.images[3] == 9).all()
    assert data.images[1].min() < 10 and data.images[1].max() > 245  # 16-bit scaled, not clipped


def test_folder_failures_name_the_path(tmp_path):
    nope = tmp_path / "nope"
    assert f"{nope} does not exist" in one_line_error(fetch, "folder", root=nope)
    (tmp_path / "file").write_text("a file")
    assert f"{tmp_path / 'file'} is a file, not a folder" in one_line_error(
        fetch, "folder", root=tmp_path / "file")
    (tmp_path / "file").unlink()
    assert f"no class folders in {tmp_path}" in one_line_error(fetch, "folder", root=tmp_path)
    save(tmp_path / "a" / "x.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".DS_Store").write_bytes(b"hidden, so b is still empty")
    message = one_line_error(fetch, "folder", root=tmp_path)
    assert f"class folder {tmp_path / 'b'} is empty" in message


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_a_file_that_is_not_an_image_is_named(tmp_path, kind):
    save(tmp_path / "a" / "x.png", np.zeros((8, 8), np.uint8))
    save(tmp_path / "b" / "x.png", np.ones((8, 8), np.uint8))
    bad = tmp_path / "a" / "y.png"
    if kind == "text":
        bad.write_text("not an image")
    else:
        save(bad, np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8))
        bad.write_bytes(bad.read_bytes()[:400])  # header intact, pixels cut
    message = one_line_error(fetch, "folder", root=tmp_path)
    assert message.startswith(f"folder dataset: {bad} is not a readable image (")


# --- save and load ------------------------------------------------------------------------

def test_save_and_load_keep_images_labels_and_class_names(tmp_path):
    images, labels = random_images(12, (4, 4, 3), seed=1)
    raw = RawDataset(images, labels, 255, tuple(CIFAR_NAMES))
    save_raw(tmp_path / "raw.safetensors", raw)
    back = load_raw(tmp_path / "raw.safetensors")
    np.testing.assert_array_equal(back.images, images)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.max_value == 255 and back.classes == tuple(CIFAR_NAMES)


def test_raw_dataset_rejects_labels_outside_its_classes():
    with pytest.raises(ValueError, match="labels span 0..3 but there are 2 classes"):
        RawDataset(np.zeros((4, 2, 2), np.uint8), np.arange(4), 255, ("a", "b"))


def test_a_data_folder_whose_tilde_names_no_user_is_one_line(monkeypatch):
    from transferlab.datasets.torchvision_sets import default_cache_dir
    from transferlab.errors import UserError

    monkeypatch.setenv("TRANSFERLAB_DATA", "~nosuchuser_transferlab/x")
    with pytest.raises(UserError, match="TRANSFERLAB_DATA='~nosuchuser_transferlab/x': its ~"):
        default_cache_dir()


def test_every_registered_dataset_is_in_the_schema_and_loads_by_its_module():
    """The registry is the one list: the schema's names are its names, and every declared
    dataset's module can load it (the embedded ones here, offline)."""
    from transferlab import datasets
    from transferlab.params import DatasetSpec

    assert typing.get_args(DatasetSpec.model_fields["name"].annotation) == datasets.NAMES
    assert {"mnist_5k", "uci_digits", "mnist", "svhn", "folder"} <= set(datasets.NAMES)
    for dataset in datasets.list_datasets():
        assert dataset.summary and callable(datasets.family_module(dataset.name).load)
        assert set(dataset.official_splits) <= {"test", "val"}
        if dataset.needs_root:
            assert callable(datasets.family_module(dataset.name).has_split)
        assert set(dataset.made_from) <= set(datasets.NAMES) - {dataset.name}
    with pytest.raises(UserError, match="unknown dataset 'nope': choose one of "):
        datasets.fetch("nope")


@pytest.mark.parametrize("source, target, refused", [
    ("mnist_5k", "mnist_blend", True), ("mnist_blend", "mnist_5k", True),
    ("mnist_5k", "mnist_half", True), ("mnist_half", "mnist_blend", False),
    ("mnist_blend", "mnist_half", False), ("uci_digits", "uci_digits_noise", True),
    ("mnist_5k", "uci_digits_noise", False)])
def test_a_pair_made_from_the_same_images_is_refused(source, target, refused):
    """mnist_blend hides mnist_5k's digits under photo patches: prepare's content check cannot
    find them, so the params check refuses the pair (disjoint class lists are allowed)."""
    from tests.conftest import tiny_params_dict
    from transferlab.params import parse_params

    params = tiny_params_dict()
    params["data"]["source"]["name"], params["data"]["target"]["name"] = source, target
    if refused:
        with pytest.raises(UserError, match=f"data.source={source} and data.target={target} "
                                            "share images"):
            parse_params(params)
        params["data"]["source"]["classes"], params["data"]["target"]["classes"] = [0, 1], [2, 3]
    assert parse_params(params).data.target.name == target


def test_the_noisy_digits_are_the_uci_digits_under_seeded_gaussian_noise():
    """uci_digits_noise: the same labels and order as uci_digits, every image moved by noise of
    sd 0.25 (on [0, 1]) clipped to the range, the same bytes on every load."""
    from transferlab import datasets
    from transferlab.datasets.corrupted import SIGMA

    clean, noisy = datasets.fetch("uci_digits"), datasets.fetch("uci_digits_noise")
    again = datasets.fetch("uci_digits_noise")
    assert np.array_equal(noisy.labels, clean.labels) and noisy.classes == clean.classes
    assert noisy.max_value == 255 and noisy.images.shape == clean.images.shape
    assert np.array_equal(noisy.images, again.images)
    difference = noisy.images / 255.0 - clean.images / clean.max_value
    inside = (noisy.images > 0) & (noisy.images < 255)  # the clipped pixels lose their noise
    assert abs(difference[inside].std() - SIGMA) < 0.03
    assert (difference != 0).mean() > 0.6  # a 0 background pixel under negative noise stays 0
