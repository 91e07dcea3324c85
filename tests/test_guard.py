"""The applicability-domain guard: fitted by calibrate, stored with weights_only, scored alike by PyTorch and
ONNX, and written to the prediction table; an MR and a photograph are flagged, the training source is not."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from lungcnn.calibration.guard import GuardConfig, fit_guard, leave_series_out_scores
from lungcnn.errors import LungCNNInputError
from lungcnn.inference import schema
from lungcnn.inference.batch import predict
from lungcnn.inference.onnx_export import export_onnx
from lungcnn.inference.onnx_runtime import load_onnx
from lungcnn.inference.predictor import OUT_OF_DOMAIN, Predictor
from lungcnn.models.checkpoint import load_checkpoint, save_checkpoint
from lungcnn.models.guard import KnnDistance
from lungcnn.spec import DomainGuard, ModelSpec
from tests.conftest import SHARED_DATA, photo_png

MR = get_testdata_file("MR_small.dcm")


@pytest.fixture(scope="module")
def ood_folder(tmp_path_factory, tiny_root) -> Path:
    folder = tmp_path_factory.mktemp("ood")
    (folder / "brain_mr.dcm").write_bytes(Path(MR).read_bytes())
    (folder / "photo.png").write_bytes(photo_png())
    for i, slice_ in enumerate(sorted(tiny_root.rglob("*.png"))[:3]):
        (folder / f"ct_{i}.png").write_bytes(slice_.read_bytes())
    return folder


def test_knn_distance_is_the_distance_of_unit_vectors_to_the_kth_neighbour():
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    scores = KnnDistance(bank, k=2)(torch.tensor([[5.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(scores.numpy(), [np.sqrt(2), np.sqrt(2 - np.sqrt(2))], rtol=1e-6)
    with pytest.raises(ValueError):
        KnnDistance(bank, k=4)


def test_leave_series_out_never_scores_an_image_against_its_own_series():
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
    scores = leave_series_out_scores(bank, ["a", "a", "b"], k=1)
    assert scores[0] > 1.0 and scores[1] > 1.0  # its near-copy is in its own series: not a neighbour


def test_guard_is_fitted_stored_and_reloaded_with_weights_only(calibrated_ckpt):
    spec, state = load_checkpoint(calibrated_ckpt)  # torch.load(weights_only=True) inside
    guard = spec.guard
    assert isinstance(guard, DomainGuard) and guard.method == "knn" and guard.threshold > 0
    assert tuple(state["guard.bank"].shape) == (guard.bank_size, guard.feature_dim)
    assert "training images" in guard.fitted_on and "validation" in guard.fitted_on
    assert guard.details["validation_images"] >= 1 and guard.details["leave_series_out_images"] >= 1
    assert ModelSpec.from_metadata(spec.to_metadata()) == spec
    old = spec.to_metadata()
    del old["guard"]  # a format-2 checkpoint written before the guard existed still loads, unguarded
    assert ModelSpec.from_metadata(old).guard is None
    with pytest.raises(LungCNNInputError, match="threshold"):
        DomainGuard(threshold=-1.0)
    with pytest.raises(LungCNNInputError, match="calibration.guard.quantile"):
        GuardConfig(quantile=0.0)


def test_a_threshold_set_for_an_unseen_source_accepts_the_sources_spread_and_refuses_one_source():
    """unseen="source": the threshold comes from each training image against the other sources, so an image as far
    from the bank as the training sources lie from each other is answered, where the new-patient threshold (two
    tight clusters of patients) refuses it; a split of one source has no such scores and is refused."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.zeros(40, 8), torch.zeros(40, 8)
    a[:, 0], b[:, 1] = 1, 1  # two sources at right angles, each a tight cluster of 4 patients
    bank = torch.cat([a, b]) + 0.01 * torch.randn(80, 8, generator=gen)
    patients, sources = [f"p{i // 10}" for i in range(80)], ["a"] * 40 + ["b"] * 40
    val = bank[::10] + 0.01 * torch.randn(8, 8, generator=gen)
    between = torch.zeros(1, 8)
    between[0, 0], between[0, 2] = 1, 1  # 45 degrees from source a: a third source's look
    thresholds = {}
    for unseen, groups in (("patient", patients), ("source", sources)):
        guard, tensors = fit_guard(bank, groups, val, GuardConfig(unseen=unseen), "validation images")
        score = float(KnnDistance.from_state({"bank": tensors["guard.bank"]}, 1)(between))
        thresholds[unseen] = (guard.threshold, score)
        assert guard.details["unseen"] == unseen
        assert guard.details["series" if unseen == "patient" else "sources"] == (8 if unseen == "patient" else 2)
    (patient_threshold, score), (source_threshold, _) = thresholds["patient"], thresholds["source"]
    assert patient_threshold < score <= source_threshold  # refused for a new patient, answered for a new source
    assert source_threshold == pytest.approx(np.sqrt(2), abs=0.05)  # the sources' own distance (at right angles)
    with pytest.raises(LungCNNInputError, match="two or more sources"):
        fit_guard(bank, ["a"] * 80, val, GuardConfig(unseen="source"), "validation images")
    with pytest.raises(LungCNNInputError, match="calibration.guard.unseen"):
        GuardConfig(unseen="hospital")


def test_a_guard_without_its_bank_is_refused(calibrated_ckpt, tmp_path):
    spec, state = load_checkpoint(calibrated_ckpt)
    save_checkpoint(tmp_path / "no_bank.ckpt", spec, {k: v for k, v in state.items() if not k.startswith("guard.")})
    with pytest.raises(LungCNNInputError, match="reference bank"):
        Predictor.from_checkpoint(tmp_path / "no_bank.ckpt")


def test_mr_and_photo_are_flagged_training_source_is_not(calibrated_ckpt, ood_folder, tiny_root):
    predictor = Predictor.from_checkpoint(calibrated_ckpt)
    flagged = predictor.predict_files([ood_folder / "brain_mr.dcm", ood_folder / "photo.png"])
    assert [p.in_domain for p in flagged] == [False, False]
    assert all(p.decision == OUT_OF_DOMAIN and not p.answered and p.domain_score > predictor.spec.guard.threshold
               for p in flagged)
    assert all(set(p.probabilities) == set(predictor.class_names) for p in flagged)  # kept for research
    slices = predictor.predict_files(sorted(tiny_root.rglob("*.png")))
    assert np.mean([p.in_domain for p in slices]) >= 0.9
    assert all(p.decision in predictor.class_names for p in slices if p.in_domain)


def test_onnx_and_pytorch_agree_on_the_domain_score(calibrated_ckpt, ood_folder, tmp_path):
    torch_pred = Predictor.from_checkpoint(calibrated_ckpt)
    onnx_path, _ = export_onnx(calibrated_ckpt, tmp_path / "guarded.onnx")
    spec, backend = load_onnx(onnx_path)
    onnx_pred = Predictor(spec, backend=backend)
    files = sorted(ood_folder.iterdir())
    a, b = torch_pred.predict_files(files), onnx_pred.predict_files(files)
    # sqrt(2 - 2 cos) in float32: cos is exact to ~1e-7, so a score near 0 (an image of the bank) is exact to ~1e-3.
    np.testing.assert_allclose([p.domain_score for p in a], [p.domain_score for p in b], atol=2e-3)
    assert [p.in_domain for p in a] == [p.in_domain for p in b] and [p.decision for p in a] == [p.decision for p in b]


def test_predict_csv_writes_the_guard_columns(calibrated_ckpt, ood_folder, tmp_path):
    out = tmp_path / "predictions.csv"
    predict([ood_folder], calibrated_ckpt, out, backend="torch", workers=0, progress=False)
    with open(out, newline="") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    spec, _ = load_checkpoint(calibrated_ckpt)
    assert list(next(iter(rows.values()))) == schema.columns(spec.task)
    for name in ("brain_mr.dcm", "photo.png"):
        assert rows[name]["in_domain"] == "false" and rows[name]["decision"] == OUT_OF_DOMAIN
        assert float(rows[name]["domain_score"]) > spec.guard.threshold and rows[name]["probability_malignant"] != ""
    assert {rows[f"ct_{i}.png"]["in_domain"] for i in range(3)} == {"true"}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/iqothnccd-dev")
def test_real_slices_of_unseen_series_pass_and_non_ct_is_flagged():
    """ImageNet MobileNetV2 features (no training: kept fast) on real IQ-OTH/NCCD slices: a bank from some
    series, a threshold from others, then slices of yet other series pass while an MR and a photo do not."""
    import pandas as pd

    from lungcnn.models.checkpoint import build_guard
    from lungcnn.models.guard import pooled_features
    from lungcnn.models.net import LungNet
    from lungcnn.spec import ModelSpec

    groups = pd.read_csv(SHARED_DATA / "groups.csv")
    groups = groups[groups["file"].str.startswith("Malignant")]
    series = sorted(groups["group"].unique())
    pick = {name: groups[groups["group"].isin(series[i::3])].groupby("group").head(4) for i, name in
            enumerate(("bank", "val", "new"))}
    net = LungNet("mobilenetv2_100", pretrained="imagenet").eval()
    spec = ModelSpec.for_training("binary", ["benign", "malignant"], "mobilenetv2_100", 128, 0.2,
                                  {"image_size": 128, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
    predictor = Predictor(spec, net)

    def features(files):
        return pooled_features(net, [predictor.normalise(predictor.read([SHARED_DATA / f for f in files])[0])])

    guard, tensors = fit_guard(features(pick["bank"]["file"]), list(pick["bank"]["group"]), features(pick["val"]["file"]),
                               GuardConfig(), "validation images")
    state = {**{k: v for k, v in net.state_dict().items()}, **tensors}
    guarded = Predictor(spec.replace(guard=guard), net, guard=build_guard(spec.replace(guard=guard), state))
    new = guarded.predict_files([SHARED_DATA / f for f in pick["new"]["file"]])
    assert np.mean([p.in_domain for p in new]) >= 0.9
    others = guarded.predict_files([MR, get_testdata_file("examples_jpeg2k.dcm")])
    assert [p.in_domain for p in others] == [False, False]


def test_a_standardizing_head_s_guard_measures_the_raw_features_alike_everywhere(tiny_root, tmp_path):
    """model.standardize=true: the guard's bank holds the training images' raw pooled features (not the head's
    standardised ones: those let non-CT files through, docs/results/sources.md), calibrate fits it and PyTorch and
    ONNX score images the same way, so a training image lies on its own bank entry (score ~0)."""
    import pandas as pd

    from lungcnn.calibration.fit import calibrate
    from lungcnn.models.checkpoint import build_network
    from lungcnn.training.train import train
    from tests.conftest import make_cfg, tiny_overrides

    run = tmp_path / "std"
    result = train(make_cfg(run, [*tiny_overrides(tiny_root), "experiment=iqothnccd", "data.augment=[]",
                                  "model.standardize=true", "trainer.max_epochs=1"]))
    ckpt = tmp_path / "std.calibrated.ckpt"
    calibrate(result["best_checkpoint"], ckpt)
    spec, state = load_checkpoint(ckpt)
    net = build_network(spec, state)
    assert spec.network.standardize and net.head.standardize is not None
    split = pd.read_csv(run / "split.csv")
    train_files = [tiny_root / f for f in split.loc[split["split"] == "train", "file"][:4]]
    onnx_path, _ = export_onnx(ckpt, tmp_path / "std.onnx")
    onnx_spec, backend = load_onnx(onnx_path)
    torch_predictor = Predictor.from_checkpoint(ckpt)
    for predictor in (torch_predictor, Predictor(onnx_spec, backend=backend)):
        scores = [p.domain_score for p in predictor.predict_files(train_files)]
        np.testing.assert_allclose(scores, 0, atol=3e-3)
    # The bank is the raw features: a training image's raw features lie on a bank row, its standardised ones do not.
    from lungcnn.models.guard import pooled_features

    raw = pooled_features(net, [torch_predictor.normalise(torch_predictor.read(train_files[:1])[0])])
    bank = torch.nn.functional.normalize(state["guard.bank"].float(), dim=1)

    def nearest_cosine(features: torch.Tensor) -> float:
        return (torch.nn.functional.normalize(features, dim=1) @ bank.T).max().item()

    assert nearest_cosine(raw) == pytest.approx(1.0, abs=1e-4)
    assert nearest_cosine(net.head.standardize(raw)) < 0.999


def test_standardised_knn_distance_and_its_round_trip_through_the_state():
    """The novelty bank: standardised before normalising, and rebuilt from its state_dict unchanged."""
    bank = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    mean, scale = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0])  # standardised bank: (1, 0) and (0, 2)
    queries = torch.tensor([[5.0, 1.0], [1.0, 0.0], [3.0, 2.0]])  # standardised: (2, 0), (0, -1), (1, 1)
    module = KnnDistance(bank, 1, mean, scale)
    cosine = np.array([1.0, 0.0, np.sqrt(0.5)])
    np.testing.assert_allclose(module(queries).numpy(), np.sqrt(2 - 2 * cosine), atol=1e-6)
    again = KnnDistance.from_state(module.state_dict(), 1)
    np.testing.assert_allclose(again(queries).numpy(), module(queries).numpy(), atol=1e-7)
    assert set(module.state_dict()) == {"bank", "mean", "scale"} and set(KnnDistance(bank, 1).state_dict()) == {"bank"}
    with pytest.raises(ValueError, match="standardisation"):
        KnnDistance(bank, 1, mean, None)
