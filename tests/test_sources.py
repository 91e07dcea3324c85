"""Several sources through one data module (class maps, groups per source, the source column), their bad-input
messages, and the rendering into the model's window (re-windowing round trip, rendering augmentation)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungcnn.data.datamodule import LungCTDataModule, holdout_split, source_weights
from lungcnn.data.io import LungWindow
from lungcnn.data.rendering import parse_export_window, parse_window, render, rendering_augment, rewindow, to_hu
from lungcnn.data.splits import load_split
from lungcnn.errors import LungCNNInputError

NAMES = ["not_malignant", "malignant"]
LUNG, SOFT = LungWindow(-600, 1500), LungWindow(40, 400)


def _hu_phantom(size: int = 48, seed: int = 0) -> np.ndarray:
    """A synthetic axial slice in HU: air, body (soft tissue), two lungs, a bright nodule, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    hu = np.full((size, size), -1000.0)
    hu[(x - 0.5) ** 2 / 0.2 + (y - 0.5) ** 2 / 0.12 < 1] = 40.0
    for cx in (0.32, 0.68):
        hu[(x - cx) ** 2 / 0.02 + (y - 0.5) ** 2 / 0.06 < 1] = -850.0
    hu[(x - 0.3) ** 2 + (y - 0.45) ** 2 < 0.003] = 30.0
    return hu + rng.normal(0, 20, hu.shape)


def _blocks_hu(seed: int) -> np.ndarray:
    """64 x 64 random 8 x 8 blocks of -900..100 HU: slices far apart in the audit's hash (only copies group)."""
    return np.kron(np.random.default_rng(seed).uniform(-900, 100, (8, 8)), np.ones((8, 8)))


def _export(hu: np.ndarray, window: LungWindow, path) -> None:
    """An 8-bit PNG export of `hu` with `window`, as a PACS screenshot or a data set's PNGs are made."""
    Image.fromarray(np.rint(window.apply(hu) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory, tiny_root):
    """`hospital`: the tiny synthetic set under other folder names (benign folder = not malignant), its groups.csv;
    `scans`: normal slices only, exported with a lung window, two near-identical copies per slice (no groups)."""
    base = tmp_path_factory.mktemp("sources")
    hospital = base / "hospital"
    shutil.copytree(tiny_root, hospital)
    (hospital / "benign").rename(hospital / "Benign cases")
    (hospital / "malignant").rename(hospital / "Malignant cases")
    groups = pd.read_csv(hospital / "groups.csv")
    groups["file"] = groups["file"].str.replace("benign/", "Benign cases/").str.replace("malignant/", "Malignant cases/")
    groups.to_csv(hospital / "groups.csv", index=False)
    scans = base / "scans" / "normal"
    scans.mkdir(parents=True)
    for k in range(6):
        hu = _blocks_hu(k)
        _export(hu, LUNG, scans / f"s{k}_a.png")
        _export(hu + 1.0, LUNG, scans / f"s{k}_b.png")
    return [
        {"name": "hospital", "root": str(hospital), "window": "as_is", "groups": "groups.csv",
         "class_folders": {"Benign cases": "not_malignant", "Malignant cases": "malignant"}},
        {"name": "scans", "root": str(base / "scans"), "window": "lung", "groups": "similarity", "weight": 2.0,
         "class_folders": {"normal": "normal"}},
    ]


def _dm(sources, tmp_path=None, **kwargs) -> LungCTDataModule:
    return LungCTDataModule(root=None, class_folders={"x": "y"}, class_names=NAMES, normal_as="negative",
                            image_size=64, batch_size=4, sources=sources, seed=0,
                            output_dir=str(tmp_path) if tmp_path else None, **kwargs)


def test_two_sources_through_one_datamodule(two_sources, tmp_path):
    dm = _dm(two_sources, tmp_path, window={"level": 40, "width": 400})
    dm.setup()
    frame = dm.frame
    assert sorted(frame["source"].unique()) == ["hospital", "scans"] and len(frame) == 30 + 12
    scans = frame[frame["source"] == "scans"]
    # Class map: normal -> label 0 under normal_as=negative; the hospital's folders by its own map.
    assert (scans["label"] == 0).all() and (scans["class_name"] == "not_malignant").all()
    assert set(frame.loc[frame["source"] == "hospital", "label"]) == {0, 1}
    # Groups: the hospital's from its groups.csv, the scans' near-identical pairs joined by the similarity grouping.
    assert frame["group"].str.split(":").str[0].eq(frame["source"]).all()
    assert frame.loc[frame["source"] == "hospital", "group"].nunique() == 10
    assert scans["group"].nunique() == 6 and (scans.groupby("group").size() == 2).all()
    assert not (frame.groupby("group")["split"].nunique() > 1).any()  # grouped within each source
    # The source column is in split.csv, and the saved split reads back.
    saved = pd.read_csv(tmp_path / "split.csv")
    assert list(saved.columns) == ["file", "label", "group", "split", "source"]
    assert load_split(tmp_path / "split.csv", frame).equals(frame["split"])
    assert dm.describe()["sources"][1]["window"] == {"level": -600.0, "width": 1500.0}
    # A lung-window export read into the soft-tissue model window: the HU as that window renders them.
    first = scans.index[0]
    assert frame.loc[first, "file"] == "scans/normal/s0_a.png"
    expected = SOFT.apply(_blocks_hu(0)) * 255
    assert np.abs(dm.images[first] - expected).max() <= 255 * LUNG.width / 255 / SOFT.width + 1


def test_holdout_source_is_the_whole_test_split(two_sources):
    dm = _dm(two_sources, holdout_source="scans")
    dm.setup()
    split = dm.frame.groupby("source")["split"].agg(set)
    assert split["scans"] == {"test"} and split["hospital"] == {"train", "val"}


def test_holdout_split_trains_whole_a_source_of_few_groups():
    """A 2-patient source cannot spare a validation share: it trains whole, the others are split."""
    many = [(f"m{g}_{i}", "many", f"m{g}", g % 2) for g in range(20) for i in range(3)]
    few = [(f"f{g}_{i}", "few", f"f{g}", 0) for g in range(2) for i in range(10)]
    held = [(f"h{g}", "held", f"h{g}", g % 2) for g in range(4)]
    frame = pd.DataFrame(many + few + held, columns=["file", "source", "group", "label"])
    split = holdout_split(frame, "held", val_fraction=0.15, seed=0, grouped=True)
    by_source = split.groupby(frame["source"]).agg(set)
    assert by_source["held"] == {"test"} and by_source["few"] == {"train"} and by_source["many"] == {"train", "val"}
    assert (split.groupby(frame["group"]).nunique() == 1).all()  # a patient in one split
    with pytest.raises(LungCNNInputError, match="none can spare a validation split"):
        holdout_split(frame[frame["source"] != "many"], "held", val_fraction=0.15, seed=0, grouped=True)


def test_source_weights_share_draws_by_weight_and_class():
    frame = pd.DataFrame({"source": ["a"] * 4 + ["b"] * 2, "label": [0, 1, 1, 1, 0, 0], "file": list("uvwxyz")})
    sources = [type("S", (), {"name": "a", "weight": 1.0})(), type("S", (), {"name": "b", "weight": 3.0})()]
    w = source_weights(frame, sources)
    assert np.isclose(w[:4].sum() * 3, w[4:].sum())  # b draws three times as often as a
    assert np.isclose(w[0], w[1:4].sum())  # within a, each class equally


@pytest.mark.parametrize("change, match", [
    ({"root": "/no/such/folder"}, r"data\.sources\[scans\]\.root: folder not found"),
    ({"window": "sunset"}, r"data\.sources\[scans\]\.window: unknown window 'sunset'"),
    ({"window": None, "drop": "window"}, r"data\.sources\[scans\]\.window is missing"),
    ({"class_folders": {"tumour": "malignant"}}, r"data\.sources\[scans\]: .*unknown class folder 'normal'"),
    ({"groups": "patients.csv"}, r"data\.sources\[scans\]\.groups: .*patients\.csv not found"),
    ({"weight": 0}, r"data\.sources\[scans\]\.weight must be a number > 0"),
])
def test_a_bad_source_gets_one_line_before_any_image_is_read(two_sources, change, match):
    bad = {**two_sources[1], **{k: v for k, v in change.items() if k != "drop"}}
    bad.pop(change.get("drop", "-"), None)
    with pytest.raises(LungCNNInputError, match=match) as caught:
        _dm([two_sources[0], bad]).prepare_data()
    assert "\n" not in str(caught.value)


def test_one_root_stays_one_folder_without_a_source_column(tiny_root, tmp_path):
    dm = LungCTDataModule(root=str(tiny_root), class_folders={"benign": "benign", "malignant": "malignant"},
                          class_names=["benign", "malignant"], image_size=64, output_dir=str(tmp_path))
    dm.setup()
    assert "source" not in dm.frame and list(pd.read_csv(tmp_path / "split.csv").columns) == ["file", "label", "group", "split"]


def test_rewindow_round_trip_on_a_synthetic_hu_image(tmp_path):
    hu = _hu_phantom()
    # Exact inside the window (8-bit quantisation aside: at most half a grey level, width / 510 HU).
    lung = np.rint(LUNG.apply(hu) * 255) / 255
    inside = (hu > LUNG.level - LUNG.width / 2) & (hu < LUNG.level + LUNG.width / 2)
    assert np.abs(to_hu(lung, LUNG) - hu)[inside].max() <= LUNG.width / 510 + 1e-6
    # Lung window -> soft-tissue window equals rendering the HU in the soft-tissue window directly, within the
    # lung export's quantisation (1500/255 HU, i.e. 3.75 soft-tissue grey levels).
    assert np.abs(rewindow(lung, LUNG, SOFT) - SOFT.apply(hu)).max() <= LUNG.width / 255 / SOFT.width + 1e-6
    # And back: soft -> lung -> soft is the identity inside the soft window.
    soft = SOFT.apply(hu)
    assert np.allclose(rewindow(rewindow(soft, SOFT, LUNG), LUNG, SOFT), soft, atol=1e-5)
    # Through a file, as a source reads it: an 8-bit export read back into the model window.
    _export(hu, LUNG, tmp_path / "slice.png")
    read = render(tmp_path / "slice.png", parse_window("k", "lung"), SOFT)
    assert np.abs(read - SOFT.apply(hu)).max() <= LUNG.width / 255 / SOFT.width + 1e-6
    assert np.array_equal(render(tmp_path / "slice.png", parse_window("k", "as_is"), SOFT), lung.astype(np.float32))


def test_predict_reads_a_users_export_as_training_reads_a_source_with_that_window(trained_ckpt, tmp_path):
    """`lungcnn-predict --export-window mediastinal` (a user's soft-tissue-window PNGs): the same pixels as a training
    source with `window: mediastinal`, through every prediction path (`Predictor.load`), and other probabilities than
    as it is."""
    from lungcnn.data.transforms import load_for_model
    from lungcnn.inference.batch import predict
    from lungcnn.inference.predictor import Predictor

    _export(_hu_phantom(64), SOFT, tmp_path / "slice.png")
    plain = Predictor.from_checkpoint(trained_ckpt)
    assert (plain.window.level, plain.window.width) != (SOFT.level, SOFT.width)  # else re-windowing is the identity
    soft = Predictor.from_checkpoint(trained_ckpt, export_window=parse_export_window("40,400"))
    as_source = load_for_model(tmp_path / "slice.png", plain.image_size, plain.window,
                               rendering=parse_window("k", "mediastinal"))
    assert np.array_equal(soft.load(tmp_path / "slice.png"), as_source)
    assert not np.array_equal(plain.load(tmp_path / "slice.png"), as_source)
    rows = {}
    for window in ("as_is", "mediastinal"):
        predict([tmp_path / "slice.png"], trained_ckpt, tmp_path / f"{window}.csv", backend="torch", workers=1,
                progress=False, export_window=window)
        rows[window] = pd.read_csv(tmp_path / f"{window}.csv").iloc[0]
    assert rows["mediastinal"]["probability_malignant"] == pytest.approx(
        soft.predict_files([tmp_path / "slice.png"])[0].probabilities["malignant"], abs=1e-5)
    assert rows["mediastinal"]["probability_malignant"] != pytest.approx(rows["as_is"]["probability_malignant"], abs=1e-4)
    assert parse_export_window("lung") == parse_window("k", "lung")
    assert parse_export_window(None) is None and parse_export_window("as_is") is None


def test_rendering_augment_changes_rendering_not_shape():
    import albumentations as A

    image = np.rint(SOFT.apply(_hu_phantom(64)) * 255).astype(np.uint8)
    transform = A.Compose(rendering_augment({"level": 40, "width": 400}, p=1.0), seed=0)
    out = transform(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)

    # As one entry of data.augment (the list it returns is spliced in, before the tensor conversion).
    dm = LungCTDataModule(root="unused", class_folders={"a": "b"}, class_names=NAMES,
                          augment=[A.HorizontalFlip(p=0.5), rendering_augment(p=0.5)])
    names = [type(t).__name__ for t in dm.train_transform.transforms]
    assert names[:5] == ["HorizontalFlip", "RandomBrightnessContrast", "RandomGamma", "GaussNoise", "ImageCompression"]



def test_foreign_export_renders_a_lung_window_export_back_into_the_model_window():
    """An 8-bit lung-window export (-600/1500) re-windowed into 50/400 keeps HU up to +150 only (grey 191) in steps
    of about 6 HU; exporting through the model's own window changes nothing; a slice of the phantom exported and
    re-rendered by `render`'s own rewindow matches the transform."""
    import albumentations as A

    from lungcnn.data.foreign_export import ForeignExport, export_lut

    model, lung = LungWindow(50, 400), LungWindow(-600, 1500)
    lut = export_lut(model, lung)
    assert lut.max() == 191 and (np.diff(lut.astype(int)) >= 0).all() and 45 <= len(np.unique(lut)) <= 56
    assert np.array_equal(export_lut(model, model), np.arange(256))
    image = np.rint(model.apply(_hu_phantom(64)) * 255).astype(np.uint8)
    exported = np.round(lung.apply(to_hu(image / 255.0, model)) * 255) / 255  # what a lung-window PNG holds
    expected = np.round(rewindow(exported, lung, model) * 255).astype(np.uint8)
    assert np.array_equal(lut[image], expected)

    fixed = ForeignExport({"level": 50, "width": 400}, windows=["lung"], level_hu=0, width_fraction=0, p=1.0)
    out = A.Compose([fixed], seed=0)(image=np.dstack([image] * 3))["image"]
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and np.array_equal(out[..., 0], expected)
    jittered = A.Compose([ForeignExport({"level": 50, "width": 400}, p=1.0)], seed=0)
    assert len({jittered(image=image)["image"].tobytes() for _ in range(4)}) > 1  # the window is drawn per image
    # Serialised with its settings, so the feature cache's augmentation key sees them.
    assert fixed.to_dict()["transform"]["windows"] == ["lung"]
    for bad in ({"windows": "lung"}, {"windows": ["hu"]}, {"windows": []}, {"width_fraction": 1.0}, {"level_hu": -1}):
        with pytest.raises(LungCNNInputError, match="ForeignExport"):
            ForeignExport({"level": 50, "width": 400}, **bad)
    with pytest.raises(LungCNNInputError, match="uint8"):
        fixed.apply(image.astype(np.float32), lut=lut)

def test_by_source_cv_end_to_end(tmp_path, capsys):
    """`python -m lungcnn.cv run --by-source`: two tiny sources, two seeds, one job per seed and held-out source; each
    job tests on exactly its held-out source, each seed's per-source table is recomputed from the predictions
    written, and the spread over seeds from those tables."""
    from lungcnn.cli import cv
    from lungcnn.data.synthetic import make_synthetic_dataset
    from lungcnn.evaluation.per_source import _figures
    from lungcnn.inference.schema import Table
    from lungcnn.models.checkpoint import load_checkpoint
    from tests.conftest import tiny_overrides

    a = make_synthetic_dataset(tmp_path / "a", n_patients={"benign": 3, "malignant": 3}, slices_per_patient=2,
                               image_size=48, seed=0)
    b = make_synthetic_dataset(tmp_path / "b", n_patients={"benign": 3, "malignant": 3}, slices_per_patient=2,
                               image_size=48, seed=1)
    maps = "class_folders:{benign:not_malignant,malignant:malignant}"
    sources = (f"data.sources=[{{name:a,root:'{a}',window:as_is,{maps}}},"
               f"{{name:b,root:'{b}',window:{{level:40,width:400}},{maps}}}]")
    overrides = ["experiment=multisource", *tiny_overrides(a)[1:], "data.root=null", sources, "data.image_size=48",
                 "trainer.max_epochs=1", "callbacks.finetune.stage1_epochs=1", "data.val_fraction=0.34"]
    out = tmp_path / "loso"
    with pytest.raises(SystemExit):  # refused before any training, not ignored
        cv.main(["run", str(out), "--by-source", *overrides, "--calibrate", "guard_margin=1.2"])
    assert "not options of lungcnn.calibrate" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):  # the seeds are the command's options, not an override
        cv.main(["run", str(out), "--by-source", *overrides, "seed=3"])
    assert "--first-seed N --repeats R" in capsys.readouterr().err and not out.exists()
    assert cv.main(["run", str(out), "--by-source", "--repeats", "2", "--first-seed", "5", *overrides,
                    "--n-resamples", "20", "--calibrate", "target_sensitivity=0.9"]) == 0
    printed = capsys.readouterr().out
    assert "| a |" in printed and "over seeds 5, 6" in printed
    summary = json.loads((out / "by_source.json").read_text())
    assert summary["sources"] == ["a", "b"] and summary["calibration"] == {"target_sensitivity": 0.9}
    assert summary["seeds"] == [5, 6] and set(summary["per_seed"]) == {"5", "6"}
    for name in ("a", "b"):
        auc = summary["over_seeds"][name]["roc_auc"]
        assert auc["values"] == [summary["per_seed"][s][name]["roc_auc"]["value"] for s in ("5", "6")]
        assert auc["min"] <= auc["mean"] <= auc["max"]
    splits = [pd.read_csv(out / f"seed{s}" / "a" / "split.csv")["split"] for s in (5, 6)]
    assert (splits[0] != splits[1]).any()  # another seed, another inner split
    for name in ("a", "b"):  # each held-out job was calibrated with the options given
        spec = load_checkpoint(out / "seed5" / name / "checkpoints" / "best.calibrated.ckpt")[0]
        assert spec.calibration.details["target_sensitivity"] == 0.9
    for name, other in (("a", "b"), ("b", "a")):
        out5, row5 = out / "seed5", summary["per_seed"]["5"]
        split = pd.read_csv(out5 / name / "split.csv")
        assert set(split.loc[split["split"] == "test", "source"]) == {name}
        assert set(split.loc[split["split"] != "test", "source"]) == {other}
        table = Table.read(out5 / name / "holdout" / "predictions.csv")
        assert set(table.frame["source"]) == {name} and len(table.frame) == 12
        p = table.frame["probability_malignant"].to_numpy()
        y = (table.frame["label"] == "malignant").to_numpy(int)
        called = (table.frame["decision"] == "malignant").to_numpy(int)
        judged = table.in_domain.to_numpy(int)
        row = row5[name]
        assert row["n"] == 12 and row["n_positive"] == 6
        for key, value in _figures(np.stack([p, called, judged], 1), y).items():
            if np.isnan(value):  # e.g. no slice judged: written as null
                assert row[key]["value"] is None
                continue
            assert row[key]["value"] == pytest.approx(value)
            assert row[key]["ci95"][0] <= value + 1e-9 and value - 1e-9 <= row[key]["ci95"][1]
        assert (out5 / name / "holdout" / "report.json").is_file()  # calibrated and evaluated like any run


def test_calibrate_and_evaluate_a_multi_source_checkpoint_on_its_own_pixels(two_sources, tmp_path):
    """A checkpoint trained on two sources is calibrated on its validation split and evaluated on its test split
    as the data module read them (the lung-window source re-windowed), with the source column; through the
    feature cache (a frozen backbone) the figures are those of the network run on the images."""
    from lungcnn.calibration.fit import calibrate
    from lungcnn.data.labelled import labelled_images
    from lungcnn.evaluation.evaluate import evaluate
    from lungcnn.inference.schema import Table
    from lungcnn.models.checkpoint import load_checkpoint
    from lungcnn.training.train import train
    from tests.conftest import make_cfg, tiny_overrides

    overrides = [*tiny_overrides(tmp_path / "unused")[1:], "data.root=null", "data.class_names=[not_malignant,malignant]",
                 "data.normal_as=negative", "data.window.level=40", "data.window.width=400",
                 "callbacks.finetune.unfreeze_top_n=0", f"feature_cache.dir={tmp_path / 'fc'}"]
    cfg = make_cfg(tmp_path / "run", overrides)
    cfg.data.sources = two_sources
    ckpt = Path(train(cfg)["best_checkpoint"])
    spec, _ = load_checkpoint(ckpt)
    dm = _dm(two_sources, split_file=str(tmp_path / "run" / "split.csv"), window={"level": 40, "width": 400})
    dm.setup()
    for split in ("val", "test"):
        data = labelled_images(spec.data, spec.preprocessing, spec.class_names, split)
        assert all(e is None for e in data.errors)
        np.testing.assert_array_equal(data.images, dm.images[(dm.frame["split"] == split).to_numpy()])
        assert list(data.frame["source"]) == list(dm.split_frame(split)["source"])
    entries = sorted((tmp_path / "fc").rglob("*.npy"))
    evaluation_views = [e for e in entries if not e.parent.name.startswith("views-")]
    assert len(evaluation_views) == len(dm.frame)  # training computed every image's evaluation view
    cached = calibrate(ckpt, tmp_path / "cached.ckpt", feature_cache=tmp_path / "fc")
    plain = calibrate(ckpt, tmp_path / "plain.ckpt")
    assert cached.calibration.temperature == pytest.approx(plain.calibration.temperature, rel=1e-3)
    assert cached.guard.threshold == pytest.approx(plain.guard.threshold, rel=1e-3)
    a = evaluate(tmp_path / "cached.ckpt", out_dir=str(tmp_path / "ra"), n_resamples=20, feature_cache=tmp_path / "fc")
    b = evaluate(tmp_path / "plain.ckpt", out_dir=str(tmp_path / "rb"), n_resamples=20)
    assert sorted((tmp_path / "fc").rglob("*.npy")) == entries  # calibrate and evaluate read training's entries
    ra, rb = (Table.read(tmp_path / r / "predictions.csv").frame for r in ("ra", "rb"))
    assert set(ra["source"]) == set(dm.split_frame("test")["source"]) and list(ra["file"]) == list(rb["file"])
    np.testing.assert_allclose(ra["probability_malignant"], rb["probability_malignant"], atol=1e-4)
    assert a["results"]["calibrated"]["threshold_calibrated"]["metrics"]["roc_auc"] == pytest.approx(
        b["results"]["calibrated"]["threshold_calibrated"]["metrics"]["roc_auc"], abs=1e-6)


def test_a_dicom_without_a_suffix_in_a_windowed_source_is_not_re_windowed(tmp_path):
    # PACS exports name files without suffixes: read_image decodes them as DICOM (in the model's window) by their
    # DICM marker, so render must not re-window them as if they were an 8-bit export of the source's window.
    from lungcnn.data.io import read_image
    from lungcnn.data.synthetic.dicom import write_ct_series

    path = write_ct_series(tmp_path, 1, 64)[0]
    assert path.suffix == ""
    model = LungWindow(50, 400)
    np.testing.assert_array_equal(render(path, parse_window("w", "lung"), model), read_image(path, window=model))
    np.testing.assert_array_equal(render(path.read_bytes(), parse_window("w", "lung"), model, name="upload"),
                                  read_image(path, window=model))


def test_a_multi_source_split_holds_each_source_s_classes_in_every_split():
    from lungcnn.data.splits import assign_splits

    # Source a: 30 small series of both classes; b: 200 one-slice positives; c: 3 whole negative scans. Stratified by
    # label alone, a's negatives are outweighed by c's scans and some split gets none of them (for 20 of these 30
    # seed x split cells); stratified by source and label, every split holds both of a's classes.
    rows = ([("a", k % 2, f"a{k}") for k in range(30) for _ in range(3)] + [("b", 1, f"b{k}") for k in range(200)]
            + [("c", 0, f"c{k}") for k in range(3) for _ in range(60)])
    frame = pd.DataFrame(rows, columns=["source", "label", "group"])
    for seed in range(10):
        split = assign_splits(frame, seed=seed)
        for name in ("train", "val", "test"):
            assert frame.loc[(split == name) & (frame["source"] == "a"), "label"].nunique() == 2
        assert (split.groupby(frame["group"]).nunique() == 1).all()


def test_cv_source_figures_scores_one_source_of_a_multi_source_cv(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "cv_source_figures.py"
    spec = importlib.util.spec_from_file_location("cv_source_figures", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for fold, rows in enumerate([
        [("iq/Malignant cases/1.jpg", "malignant", 0.9, "malignant", "g1"), ("iq/Bengin cases/2.jpg", "not_malignant", 0.2,
          "not_malignant", "g2"), ("iq/Normal cases/3.jpg", "not_malignant", 0.95, "malignant", "g3")],
        [("iq/Malignant cases/4.jpg", "malignant", 0.4, "no lungs in view", "g4"), ("iq/Bengin cases/5.jpg", "not_malignant",
          0.6, "malignant", "g5"), ("kg/x.png", "malignant", 0.1, "not_malignant", "k1")]]):
        folder = tmp_path / "seed0" / f"fold{fold}"
        (folder / "report").mkdir(parents=True)
        frame = pd.DataFrame(rows, columns=["file", "label", "probability_malignant", "decision", "group"])
        frame["source"] = np.where(frame["file"].str.startswith("iq"), "iqothnccd", "kaggle")
        frame.drop(columns="group").to_csv(folder / "report" / "predictions.csv", index=False)
        frame[["file", "group"]].to_csv(folder / "split.csv", index=False)
        # Fold 1's series threshold was fitted (0.3): it, not its slice threshold, decides its series.
        (folder / "report" / "report.json").write_text(json.dumps(
            [{"threshold_calibrated": 0.5}, {"threshold_calibrated": 0.9, "series_rule": {"threshold": 0.3}}][fold]))
    assert script.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # IQ-OTH/NCCD without its normal slice: malignant 0.9, 0.4 vs benign 0.2, 0.6 -> AUC 0.75; one malignant not judged.
    assert "'slices': 4" in out and "'slice_roc_auc': 0.75" in out and "'series_roc_auc': 0.75" in out
    assert "'sensitivity_judged': '1/1'" in out and "'specificity_judged': '1/2'" in out
    # Series at their own fold's threshold: g1 0.9 >= 0.5 and g4 0.4 >= 0.3 called; g2 0.2 < 0.5 not, g5 0.6 >= 0.3 called.
    assert "'series_sensitivity': '2/2'" in out and "'series_specificity': '1/2'" in out
    # One slice per 15-wide bin: ECE = mean |p - y| = (0.1 + 0.2 + 0.6 + 0.6) / 4.
    assert "'slice_ece': 0.375" in out


def test_the_multi_source_recipe_is_the_standardised_linear_head_and_its_finetune_variant_is_not(tmp_path):
    """experiment=multisource composes model=mobilenetv2_linear (the probe's shape: last-block features, standardised,
    linear, SGD with L2), and the optimizer it builds takes those settings; experiment=multisource_finetune keeps the
    MLP head and AdamW it was measured with (docs/results/sources.md)."""
    import torch
    from hydra.utils import instantiate

    from tests.conftest import make_cfg

    cfg = make_cfg(tmp_path, ["experiment=multisource"])
    assert (cfg.model.features, cfg.model.standardize, cfg.model.hidden, cfg.model.dropout) == ("blocks", True, 0, 0.0)
    optimizer = instantiate(cfg.model.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["weight_decay"] == 0.02 and optimizer.defaults["momentum"] == 0.9
    finetune = make_cfg(tmp_path, ["experiment=multisource_finetune"])
    assert (finetune.model.features, finetune.model.standardize, finetune.model.hidden) == ("head", False, 128)
    assert isinstance(instantiate(finetune.model.optimizer)([torch.nn.Parameter(torch.zeros(1))]), torch.optim.AdamW)
    assert finetune.data.sources == cfg.data.sources  # the same sources, only the head and schedule differ


def test_guard_margin_recomputes_held_out_shares_at_looser_margins(tmp_path, capsys, monkeypatch):
    import importlib.util
    from types import SimpleNamespace

    path = Path(__file__).parents[1] / "scripts" / "guard_margin.py"
    spec = importlib.util.spec_from_file_location("guard_margin", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    holdout = tmp_path / "luna" / "holdout"
    holdout.mkdir(parents=True)
    pd.DataFrame({"label": ["not_malignant"] * 4, "lungs_in_view": [True, True, True, False],
                  "domain_score": [0.5, 1.05, 1.15, 0.1], "probability_malignant": [0.1, 0.9, 0.1, 0.9]}
                 ).to_csv(holdout / "predictions.csv", index=False)
    (holdout / "report.json").write_text(json.dumps({"threshold_calibrated": 0.5}))
    # The run's guard was fitted at margin 2 with threshold 2.0: the margin-1 threshold is 1.0.
    guard = SimpleNamespace(threshold=2.0, details={"margin": 2.0})
    monkeypatch.setattr(script, "load_checkpoint", lambda p: (SimpleNamespace(guard=guard), {}))
    assert script.main([str(tmp_path), "--margins", "1", "1.1", "1.2"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| luna")]
    # margin 1: one of four judged, nothing called; 1.1: 0.5 and 1.05 judged, the second called (wrong);
    # 1.2: three judged, one called; the slice without lungs in view is never judged.
    assert rows == ["| luna | 1 | 0.750 | 0.000 | 0.000 | nan |", "| luna | 1.1 | 0.500 | 0.250 | 0.500 | nan |",
                    "| luna | 1.2 | 0.250 | 0.250 | 0.333 | nan |"]
