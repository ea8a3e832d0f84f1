"""Image sources: digits, ImageFolder layout, corrupt files, ten-crop geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from avgkit.data.sources import (
    DigitsSource,
    ImageFolderSource,
    UnreadableImageError,
    five_crop_boxes,
    get_augmentation,
    load_digits_images,
    ten_crop,
)
from avgkit.errors import AvgkitError


def test_digits_splits_are_disjoint_and_scaled():
    x_all, y_all = load_digits_images(size=8, split="all")
    x_tr, y_tr = load_digits_images(size=8, split="train")
    x_te, y_te = load_digits_images(size=8, split="test")
    assert x_all.shape == (1797, 1, 8, 8) and x_all.dtype == torch.float32
    assert len(x_tr) + len(x_te) == len(x_all) and len(x_te) == 359
    # every 5th image is held out, the rest keeps its order
    assert torch.equal(x_te, x_all[4::5]) and torch.equal(y_te, y_all[4::5])
    keep = np.arange(1797) % 5 != 4
    assert torch.equal(x_tr, x_all[torch.from_numpy(keep)])
    # 0..16 maps onto [-1, 1]
    assert x_all.min() == -1.0 and x_all.max() == 1.0
    assert y_all.dtype == torch.int64 and set(y_all.tolist()) == set(range(10))


def test_digits_upsampling_and_source():
    x, y = load_digits_images(size=32, split="test")
    assert x.shape == (359, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    src = DigitsSource(32, "test")
    assert len(src) == 359 and src.class_names[3] == "3"
    img, label = src[7]
    assert torch.equal(img, x[7]) and label == int(y[7])
    assert src.at_size(16)[7][0].shape == (1, 16, 16)
    with pytest.raises(AvgkitError, match="split"):
        load_digits_images(split="validation")


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    # left half black, right half white, 40 wide x 20 high
    half = np.zeros((20, 40, 3), np.uint8)
    half[:, 20:] = 255
    _save(root / "zebra" / "a.png", half)
    _save(root / "zebra" / "sub" / "b.jpg", rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
    _save(root / "ant" / "c.png", rng.integers(0, 255, (16, 24), dtype=np.uint8))  # grayscale
    (root / "ant" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "ant" / "notes.txt").write_text("ignored: not an image suffix")
    return root


def test_image_folder_layout_labels_and_crop(image_tree):
    src = ImageFolderSource(image_tree, image_size=16)
    assert src.class_names == ["ant", "zebra"]
    paths = [src.item_path(i) for i in range(len(src))]
    assert [p.split("/imgs/")[1] for p in paths] == ["ant/broken.jpg", "ant/c.png", "zebra/a.png", "zebra/sub/b.jpg"]
    img, label = src[2]
    assert label == 1 and img.shape == (3, 16, 16) and img.dtype == torch.float32
    # short side 20 -> 16, width 40 -> 32, center 16 columns = 8 black then 8 white
    assert torch.all(img[:, :, :7] == -1) and torch.all(img[:, :, 9:] == 1)
    gray, label = src[1]
    assert gray.shape == (3, 16, 16) and label == 0 and torch.equal(gray[0], gray[1])


def test_image_folder_at_a_non_square_size_covers_then_crops_the_center(image_tree):
    src = ImageFolderSource(image_tree, image_size=[8, 16])
    assert src.image_size == (8, 16) and ImageFolderSource(image_tree, [16, 16]).image_size == 16
    img, _ = src[2]  # 20 high x 40 wide, left half black: scaled to exactly 8 x 16
    assert img.shape == (3, 8, 16) and torch.all(img[:, :, :7] == -1) and torch.all(img[:, :, 9:] == 1)
    tall = src.at_size((16, 8))[2][0]  # scaled to 16 x 32 to cover 16 high, then the center 8 columns
    assert tall.shape == (3, 16, 8) and torch.all(tall[:, :, :3] == -1) and torch.all(tall[:, :, 5:] == 1)
    assert src.at_size((16, 8))[3][0].shape == (3, 16, 8)  # a 30x30 image
    assert src.at_size((16, 8))[1][0].shape == (3, 16, 8)  # a 16 high x 24 wide one, scaled up


def test_image_folder_read_in_grey_for_a_one_channel_tokenizer(image_tree):
    rgb, grey = ImageFolderSource(image_tree, image_size=16), ImageFolderSource(image_tree, 16, channels=1)
    img, label = grey[2]
    assert label == 1 and img.shape == (1, 16, 16)
    assert torch.allclose(img[0], rgb[2][0][0], atol=2 / 255)  # black and white stay black and white
    assert grey.at_size(8)[2][0].shape == (1, 8, 8) and grey.describe()["channels"] == 1
    assert "channels" not in rgb.describe()  # stores made before this option keep their fingerprint
    with pytest.raises(AvgkitError, match="1 \\(grey\\) or 3 \\(RGB\\)"):
        ImageFolderSource(image_tree, 16, channels=4)


def test_corrupt_image_is_reported_by_path(image_tree):
    src = ImageFolderSource(image_tree, image_size=16)
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        src[0]
    got = [(i, label) for i, _, label in src]
    assert got == [(1, 0), (2, 1), (3, 1)]
    assert len(src.skipped) == 1
    assert src.skipped[0].index == 0 and src.skipped[0].path.endswith("ant/broken.jpg")
    assert src.skipped[0].reason


def test_image_folder_errors(tmp_path):
    with pytest.raises(AvgkitError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope", 16)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(AvgkitError, match="no image files"):
        ImageFolderSource(tmp_path / "empty", 16)


def test_ten_crop_positions_and_flips():
    img = torch.arange(3 * 11 * 11, dtype=torch.float32).view(3, 11, 11)
    views = ten_crop(img, 8)
    assert views.shape == (10, 3, 8, 8)
    assert torch.equal(views[0], img[:, :8, :8])  # top left
    assert torch.equal(views[1], img[:, :8, 3:])  # top right
    assert torch.equal(views[2], img[:, 3:, :8])  # bottom left
    assert torch.equal(views[3], img[:, 3:, 3:])  # bottom right
    mid = five_crop_boxes(11, 8)[4]
    assert mid == (2, 2)  # round(1.5) -> 2 (half to even, like torchvision)
    assert torch.equal(views[4], img[:, 2:10, 2:10])
    # the second five are the same boxes cut from the mirrored image:
    # the mirror's top-left is the original top-right, mirrored
    mirrored = img.flip(-1)
    for k, (top, left) in enumerate(five_crop_boxes(11, 8)):
        assert torch.equal(views[5 + k], mirrored[:, top : top + 8, left : left + 8])
    assert torch.equal(views[5], views[1].flip(-1))
    assert torch.equal(views[6], views[0].flip(-1))
    assert torch.equal(views[8], views[2].flip(-1))


def test_ten_crop_matches_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    img = torch.rand(3, 35, 35)
    assert torch.equal(ten_crop(img, 32), torch.stack(tvf.ten_crop(img, 32)))


def test_ten_crop_of_a_non_square_size_matches_torchvision():
    img = torch.arange(3 * 11 * 13, dtype=torch.float32).view(3, 11, 13)
    views = ten_crop(img, (8, 10))
    assert views.shape == (10, 3, 8, 10)
    assert five_crop_boxes((11, 13), (8, 10)) == [(0, 0), (0, 3), (3, 0), (3, 3), (2, 2)]
    assert torch.equal(views[3], img[:, 3:, 3:]) and torch.equal(views[5], img.flip(-1)[:, :8, :10])
    tvf = pytest.importorskip("torchvision.transforms.functional")
    assert torch.equal(views, torch.stack(tvf.ten_crop(img, [8, 10])))
    with pytest.raises(AvgkitError, match="at least 12x10, got 11x13"):
        ten_crop(img, (12, 10))


def test_augmentations():
    tc = get_augmentation("ten-crop")
    assert tc.name == "tencrop" and tc.num_views == 10 and tc.load_size(256) == 281 and tc.load_size(32) == 35
    assert tc.load_size((32, 64)) == (35, 70) and tc(torch.rand(1, 35, 70), (32, 64)).shape == (10, 1, 32, 64)
    img = torch.rand(1, 35, 35)
    assert tc(img, 32).shape == (10, 1, 32, 32)
    flip = get_augmentation("flip")(img, 35)
    assert flip.shape == (2, 1, 35, 35) and torch.equal(flip[1], img.flip(-1))
    assert get_augmentation("none")(img, 35).shape == (1, 1, 35, 35)
    with pytest.raises(AvgkitError, match="unknown augmentation"):
        get_augmentation("rotate")
