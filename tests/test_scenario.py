import numpy as np
import pytest

from tests.conftest import tiny_params_dict
from transferlab.rawdata import RawDataset
from transferlab.errors import UserError
from transferlab.params import parse_params
from transferlab.scenario import align, build_scenario, crop_to_bbox, draw_shots, split_stratified


def test_crop_to_bbox_centres_the_ink_in_a_square():
    img = np.zeros((1, 28, 28), np.uint8)
    img[0, 10:14, 5:7] = 200  # 4 tall, 2 wide
    out = crop_to_bbox(img)
    assert out.shape == (1, 4, 4)
    assert (out[0, :, 1:3] == 200).all() and (out[0, :, [0, 3]] == 0).all()


def test_crop_to_bbox_keeps_a_blank_image():
    img = np.zeros((1, 8, 8), np.uint8)
    assert crop_to_bbox(img) is img


def test_align_gives_the_same_framing_to_both_domains():
    p = parse_params(tiny_params_dict(prepare={"image_size": 16, "crop": "bbox", "scale": "max",
                                                "bottleneck_size": 8, "channels": 1})).prepare
    mnist_like = np.zeros((1, 28, 28), np.uint8)
    mnist_like[0, 4:24, 9:19] = 255          # a digit inside a wide empty border
    uci_like = np.zeros((1, 8, 8), np.uint8)
    uci_like[0, :, 2:6] = 16                 # a digit filling its frame
    a = align(RawDataset(mnist_like, np.zeros(1, np.int64), 255), p)
    b = align(RawDataset(uci_like, np.zeros(1, np.int64), 16), p)
    assert a.shape == b.shape == (1, 1, 16, 16) and a.dtype == np.uint8
    assert a.max() == b.max() == 255  # scaled to max 1 each
    for img in (a[0, 0], b[0, 0]):  # the ink spans the height, centred left-right
        rows, cols = np.nonzero(img > 128)
        assert rows.min() == 0 and rows.max() == 15
        assert abs(cols.mean() - 7.5) < 0.5 and 4 <= cols.max() - cols.min() <= 8


def test_splits_are_disjoint_stratified_and_complete():
    labels = np.repeat(np.arange(3), 20)
    parts = split_stratified(labels, seed=0, test=0.5, val=4)
    assert sum(p.size for p in parts.values()) == labels.size
    assert np.unique(np.concatenate(list(parts.values()))).size == labels.size
    assert (np.bincount(labels[parts["test"]]) == 10).all()
    assert (np.bincount(labels[parts["val"]]) == 4).all()


def test_shots_are_nested_across_k_and_change_with_the_seed():
    labels = np.repeat(np.arange(4), 30)
    pool = np.arange(labels.size)
    one, five = draw_shots(labels, pool, 1, seed=3), draw_shots(labels, pool, 5, seed=3)
    assert set(one) <= set(five) and (np.bincount(labels[five]) == 5).all()
    assert not np.array_equal(five, draw_shots(labels, pool, 5, seed=4))


def test_too_many_shots_names_the_param():
    labels = np.repeat(np.arange(2), 3)
    with pytest.raises(UserError, match="prepare.shots=4 but class 0 has only 3"):
        draw_shots(labels, np.arange(6), 4, seed=0)


def _raw(n_per_class, size, seed):
    """Noise on a blank one-pixel border: ink on a page, as the default alignment assumes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class).astype(np.int64)
    images = np.zeros((labels.size, size, size), np.uint8)
    images[:, 1:-1, 1:-1] = rng.integers(0, 17, (labels.size, size - 2, size - 2))
    return RawDataset(images, labels, 16)


def test_test_set_is_fixed_across_seeds_and_shots():
    p = parse_params(tiny_params_dict()).prepare
    source, target = _raw(10, 28, 0), _raw(20, 8, 1)
    a = build_scenario(source, target, p, seed=0)
    b = build_scenario(source, target, p.model_copy(update={"shots": 3}), seed=1)
    np.testing.assert_array_equal(a.target_test["x_test"], b.target_test["x_test"])
    np.testing.assert_array_equal(a.target["x_val"], b.target["x_val"])
    assert a.summary["target_train"] == 20 and b.summary["target_train"] == 30
    assert "x_test" not in a.target and "x_test" not in a.source


def test_class_subset_is_renumbered_and_named():
    from transferlab.scenario import select_classes

    raw = RawDataset(np.zeros((6, 4, 4), np.uint8), np.array([0, 1, 2, 3, 4, 2]), 255,
                     tuple("abcde"))
    sub = select_classes(raw, [4, 2], "data.target.classes")
    assert sub.labels.tolist() == [0, 1, 0] and sub.classes == ("c", "e")
    with pytest.raises(UserError, match=r"data.target.classes=\[2, 7\]: the dataset has no class 7"):
        select_classes(raw, [2, 7], "data.target.classes")


def test_colour_and_gray_meet_at_the_chosen_channels():
    from transferlab.scenario import to_channels

    import torch

    gray, colour = torch.rand(2, 1, 4, 4), torch.rand(2, 3, 4, 4)
    assert torch.equal(to_channels(gray, 3)[:, 2], gray[:, 0])
    luminance = 0.299 * colour[:, 0] + 0.587 * colour[:, 1] + 0.114 * colour[:, 2]
    torch.testing.assert_close(to_channels(colour, 1)[:, 0], luminance)
    p = parse_params(tiny_params_dict(prepare={"crop": "none", "bottleneck_size": 0,
                                               "scale": "max", "channels": 3})).prepare
    rgb = RawDataset(np.full((2, 32, 32, 3), 100, np.uint8), np.array([0, 1]), 255, ("x", "y"))
    assert align(rgb, p).shape == (2, 3, 8, 8)
