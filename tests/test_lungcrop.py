"""Lung fields: cropping finds the lungs of a phantom and never fails on a non-CT image; the lung check judges no
slice without lungs (neck, abdomen, inverted) and finds both lungs on a slice of every shared source."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lungcnn.data.io import LungWindow
from lungcnn.data.lungcrop import INVERTED, NO_BODY, crop_to_lungs, find_lung_fields, lung_bbox, lung_tiles, lungs_in_view
from lungcnn.data.transforms import load_for_model


def _phantom(size: int = 128) -> np.ndarray:
    """Air, an elliptical body, two dark lungs left and right of the midline."""
    y, x = np.mgrid[:size, :size] / size
    image = np.zeros((size, size), np.float32)
    image[((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] = 0.5
    for cx in (0.3, 0.7):
        image[((x - cx) / 0.12) ** 2 + ((y - 0.5) / 0.18) ** 2 < 1] = 0.05
    return image


def test_finds_both_lungs_of_a_phantom():
    top, bottom, left, right = lung_bbox(_phantom())
    # Lungs span x in 0.18..0.82, y in 0.32..0.68 of 128 px.
    assert abs(left - 0.18 * 128) <= 3 and abs(right - 0.82 * 128) <= 3
    assert abs(top - 0.32 * 128) <= 3 and abs(bottom - 0.68 * 128) <= 3
    cropped = crop_to_lungs(_phantom(), margin=0.0)
    assert cropped.shape == (bottom - top, right - left)


def test_non_ct_images_pass_through_unchanged():
    for image in (np.zeros((64, 64), np.float32), np.random.default_rng(0).random((64, 64)).astype(np.float32)):
        assert crop_to_lungs(image).shape == image.shape or lung_bbox(image) is not None


def test_load_for_model_crops_when_asked(tmp_path):
    from PIL import Image

    path = tmp_path / "phantom.png"
    Image.fromarray((_phantom() * 255).astype(np.uint8)).save(path)
    plain = load_for_model(path, 64, LungWindow())
    cropped = load_for_model(path, 64, LungWindow(), crop="lungs")
    assert plain.shape == cropped.shape == (64, 64)
    # Cropped to the lungs, lung pixels (dark but not air) fill far more of the frame.
    def lung_fraction(image: np.ndarray) -> float:
        return float(((image > 5) & (image < 30)).mean())

    assert lung_fraction(cropped) > 1.4 * lung_fraction(plain)


# -- the lung check: slices without lung fields are not judged ---------------------------------------------
def _abdomen(size: int = 128) -> np.ndarray:
    """A body of organs (liver, stomach) with a small gas bubble: no lung fields."""
    y, x = np.mgrid[:size, :size] / size
    image = np.zeros((size, size), np.float32)
    image[((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1] = 0.45
    image[((x - 0.35) / 0.18) ** 2 + ((y - 0.5) / 0.2) ** 2 < 1] = 0.6  # liver
    image[((x - 0.68) / 0.03) ** 2 + ((y - 0.4) / 0.03) ** 2 < 1] = 0.0  # a gas bubble
    return image


def _neck(size: int = 128) -> np.ndarray:
    """A small round neck with a bright spine and a narrow trachea: no lung fields."""
    y, x = np.mgrid[:size, :size] / size
    image = np.zeros((size, size), np.float32)
    image[((x - 0.5) / 0.25) ** 2 + ((y - 0.5) / 0.2) ** 2 < 1] = 0.5
    image[((x - 0.5) / 0.05) ** 2 + ((y - 0.6) / 0.05) ** 2 < 1] = 0.95  # vertebra
    image[((x - 0.5) / 0.025) ** 2 + ((y - 0.4) / 0.025) ** 2 < 1] = 0.0  # trachea
    return image


def _bone_window(size: int = 128) -> np.ndarray:
    """Ribs and spine only, everything else black (a bone-window export): no body to look in."""
    y, x = np.mgrid[:size, :size] / size
    image = np.zeros((size, size), np.float32)
    for angle in np.linspace(0, 2 * np.pi, 14, endpoint=False):
        image[((x - 0.5 - 0.38 * np.cos(angle)) / 0.02) ** 2 + ((y - 0.5 - 0.28 * np.sin(angle)) / 0.02) ** 2 < 1] = 1.0
    return image


NOT_CHEST = {"abdomen": _abdomen, "neck": _neck, "inverted": lambda: 1.0 - _phantom()}


def test_lung_fields_found_in_a_chest_and_not_in_neck_abdomen_or_an_inverted_slice():
    fields = find_lung_fields(_phantom())
    assert fields.found and 0.1 < fields.area < 0.2  # two ellipses of 0.12 x 0.18 (pi * 0.0216 = 0.068 each)
    for name, make in NOT_CHEST.items():
        fields = find_lung_fields(make())
        assert not fields.found and fields.reason, name
        assert not lungs_in_view((make() * 255).astype(np.uint8)), name
    # A lung-window export keeps air dark grey, not black: inverted, its corners turn light grey.
    lung_window = 0.24 + 0.61 * (_phantom() == 0.5) + 0.06 * (_phantom() == 0.05)
    assert find_lung_fields(lung_window).found
    assert find_lung_fields(1.0 - lung_window).reason == INVERTED and not lungs_in_view(1.0 - lung_window)
    # No body in view at all: the check cannot tell, so it does not stop the slice (the domain guard may).
    bones = find_lung_fields(_bone_window())
    assert not bones.found and bones.reason == NO_BODY and lungs_in_view(_bone_window())


def _write(folder: Path, images: dict[str, np.ndarray]) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in images.items():
        paths.append(folder / f"{name}.png")
        Image.fromarray((image * 255).astype(np.uint8)).save(paths[-1])
    return paths


def test_predict_does_not_judge_slices_without_lungs(trained_ckpt, tmp_path):
    from lungcnn.inference.batch import predict
    from lungcnn.inference.predictor import NO_LUNGS, Predictor

    slices = {"1_chest": _phantom(), **{f"{i + 2}_{k}": make() for i, (k, make) in enumerate(NOT_CHEST.items())}}
    paths = _write(tmp_path / "series", slices)
    off = Predictor.from_checkpoint(trained_ckpt)  # a checkpoint without the setting: the check is off
    assert all(p.lungs_in_view is None and p.decision != NO_LUNGS for p in off.predict_files(paths))
    on = Predictor.from_checkpoint(trained_ckpt, lung_check=True)
    chest, *others = on.predict_files(paths)
    assert chest.lungs_in_view and chest.answered and chest.decision in on.class_names
    assert all(p.lungs_in_view is False and p.decision == NO_LUNGS and not p.answered for p in others)
    with pytest.raises(ValueError, match="lung check"):
        on.from_logits(np.zeros(1, np.float32), ["x"], None if on.spec.guard is None else np.zeros(1))
    out, series_out = tmp_path / "p.csv", tmp_path / "s.csv"
    predict([tmp_path / "series"], trained_ckpt, out, backend="torch", workers=0, progress=False, series_out=series_out,
            lung_check=True)
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert rows["lungs_in_view"].tolist() == ["true", "false", "false", "false"]
    assert rows["decision"].tolist()[1:] == [NO_LUNGS] * 3
    [series] = pd.read_csv(series_out).to_dict("records")
    assert series["n_no_lungs"] == 3 and series["most_suspicious_slice"].endswith("1_chest.png")


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_SLICES = {  # one chest slice of each shared source, as the reference model's pipeline renders it
    "iqothnccd": "iqothnccd-dev/Bengin cases/Bengin case (1).jpg",
    "chestct-kaggle": "chestct-kaggle-dev/adenocarcinoma/train__000000_(6).png",
    "luna16": "luna16-normal-dev/normal/p1_z_120.png",
    "lung-pet-ct-dx": "lung-pet-ct-dx-dev/A0001/1-30.dcm",
}


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared data at ../shared")
@pytest.mark.parametrize("source", sorted(SHARED_SLICES))
def test_lung_fields_of_one_slice_of_each_shared_source(source):
    image = load_for_model(SHARED / SHARED_SLICES[source], 224, LungWindow(level=50, width=400))
    fields = find_lung_fields(image)
    assert fields.found and 0.04 < fields.area < 0.45, (source, fields.reason, fields.area)
    count, labels = cv2.connectedComponents(fields.lungs.astype(np.uint8))
    assert count == 3  # background and two lungs, one each side of the image's middle
    sides = sorted(np.nonzero(labels == k)[1].mean() for k in (1, 2))
    assert sides[0] < 112 < sides[1]
    assert not find_lung_fields(255 - image).found  # the same slice inverted (a MONOCHROME1 mix-up)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared data at ../shared")
def test_inverted_lung_window_slices_are_not_judged():
    """Inverted LUNA16 slices (a lung-window export) whose grey lungs in a dark body passed the segmentation until
    the corners were checked."""
    for name in ("p1_z_229.png", "p2_z_043.png"):
        image = load_for_model(SHARED / "luna16-normal-dev" / "normal" / name, 224, LungWindow(level=50, width=400))
        assert lungs_in_view(image) and find_lung_fields(255 - image).reason == INVERTED, name


def test_training_records_the_lung_check_in_the_checkpoint_spec(tiny_root):
    from lungcnn.data.datamodule import LungCTDataModule
    from lungcnn.errors import LungCNNInputError
    from lungcnn.spec import ModelSpec

    folders = {"benign": "benign", "malignant": "malignant"}
    for on in (True, False):
        dm = LungCTDataModule(root=str(tiny_root), class_folders=folders, class_names=["benign", "malignant"],
                              image_size=64, lung_check=on)
        spec = ModelSpec.for_training("binary", ["benign", "malignant"], "mobilenetv2_100", 8, 0.0, dm.preprocessing())
        assert ModelSpec.from_metadata(spec.to_metadata()).preprocessing.lung_check is on
    with pytest.raises(LungCNNInputError, match="data.lung_check"):
        LungCTDataModule(root=str(tiny_root), class_folders=folders, class_names=["benign", "malignant"], lung_check="yes")


# -- lesion-scale tiles of the lung fields ---------------------------------------------------------------------------
def test_lung_tiles_cover_both_lungs_and_a_tumour_on_the_mediastinum():
    size, tile = 256, 32
    image = _phantom(size)
    y, x = np.mgrid[:size, :size]
    # Bright tissue grown from the mediastinum into the left lung (x 0.18-0.42): a notch in the dark lung field.
    nodule = (x - 0.38 * size) ** 2 + (y - 0.5 * size) ** 2 < 18**2
    image[nodule] = 0.5
    tiles = lung_tiles(image, tile, stride=16)
    assert tiles and all(0 <= t and 0 <= left and t + tile <= size and left + tile <= size for t, left in tiles)
    centres = np.array(tiles) + tile / 2
    assert (centres[:, 1] < size / 2).any() and (centres[:, 1] > size / 2).any()  # both lungs
    # Every kept tile lies mostly in a lung, counting the nodule as lung: none in the body's middle or the air.
    lungs = image < 0.2
    lungs |= nodule
    assert all(lungs[t : t + tile, left : left + tile].mean() >= 0.5 for t, left in tiles)
    # A tile mostly over the tumour is kept although most of it is not dark lung (the lungs' hulls count).
    assert max(nodule[t : t + tile, left : left + tile].mean() for t, left in tiles) > 0.6
    for name, make in NOT_CHEST.items():
        assert lung_tiles(make(), 32, 16) == [], name
    # No tile as much inside the lungs as asked (small lung fields, as at the apex): the one tile most inside them.
    (top, left), = lung_tiles(_phantom(size), 96, 48, min_inside=0.99)
    assert (_phantom(size)[top : top + 96, left : left + 96] < 0.2).mean() > 0.4


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared data at ../shared")
@pytest.mark.parametrize("name", ["luna16-normal-dev/normal/p1_z_208.png", "iqothnccd-dev/Normal cases/Normal case (112).jpg"])
def test_lungs_that_meet_at_the_midline_are_two_lungs(name):
    """Upper-thorax slices whose lungs meet in front of the mediastinum (one dark region at 224 px) were "no lungs in
    view" until the region was cut at the body's midline."""
    fields = find_lung_fields(load_for_model(SHARED / name, 224, LungWindow(level=50, width=400)))
    assert fields.found, fields.reason
    count, labels = cv2.connectedComponents(fields.lungs.astype(np.uint8))
    assert count == 3 and sorted(np.nonzero(labels == k)[1].mean() for k in (1, 2))[0] < 112
