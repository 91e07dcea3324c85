"""The clinicians' page: upload logic (uploads.py), Grad-CAM, and the Streamlit page through AppTest."""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungcnn.inference import schema
from lungcnn.inference.gradcam import gradcam
from lungcnn.inference.predictor import Predictor
from lungcnn.webapp import uploads
from lungcnn.webapp.auth import SHARED_BACKOFF, hash_password
from lungcnn.webapp.uploads import (
    UploadLimits,
    analyse_upload,
    choose_checkpoint,
    display_table,
    format_percent,
    model_card,
    results_csv,
)
from tests.pagekit import PASSWORD, dicom, patient_values_in

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app" / "streamlit_app.py"
PAGE_HASH = hash_password(PASSWORD)
OIDC = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "test-cookie-secret-0123456789",
        "client_id": "lungcnn", "client_secret": "not-a-secret",
        "server_metadata_url": "https://login.example.org/.well-known/openid-configuration"}


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor(trained_ckpt) -> Predictor:
    return Predictor.from_checkpoint(trained_ckpt)


@pytest.fixture(scope="module")
def ct_png(tiny_root) -> bytes:
    """A real (synthetic) CT slice as uploaded: the first malignant PNG of the tiny data set."""
    return sorted((tiny_root / "malignant").glob("*.png"))[0].read_bytes()


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def plain(text: str) -> str:
    """The page escapes Markdown in file names and messages; compare the text as shown."""
    return text.replace("\\", "")


# -- uploads: bad files fail one by one -----------------------------------------------------------------
def test_each_bad_file_gets_a_clear_message_and_good_files_still_succeed(predictor, ct_png):
    gray = np.asarray(Image.open(io.BytesIO(ct_png)))
    batch = [
        ("good.png", ct_png, None),
        ("empty.png", b"", "empty"),
        ("corrupt.jpg", jpeg(gray)[:300], "corrupt or truncated"),
        ("notes.png", b"patient list, do not share\n" * 10, "not an image"),
        ("big.png", ct_png, "over the"),  # the byte limit below is set under this file's size
        ("no_pixels.dcm", dicom(with_pixels=False), "no pixel data"),
        ("good.jpg", jpeg(gray), None),
    ]
    limits = UploadLimits(max_bytes=len(ct_png) * 2)
    results = []
    for name, data, _ in batch:
        lim = UploadLimits(max_bytes=len(ct_png) - 1) if name == "big.png" else limits
        results.append(analyse_upload(predictor, name, data, with_cam=False, limits=lim))
    for (name, _, expected), r in zip(batch, results):
        assert r.name == name
        if expected is None:
            assert r.ok and r.message is None and r.prediction.ok
            assert r.image.shape == (64, 64) and r.image.dtype == np.uint8
            assert 0.0 <= r.p_malignant <= 1.0 and r.prediction.decision in ("benign", "malignant")
        else:
            assert not r.ok and r.prediction is None and r.image is None
            assert r.message.startswith(name) and expected in r.message, r.message
            assert "\n" not in r.message and "Traceback" not in r.message


def test_pixel_limit_is_checked_before_decoding(predictor):
    r = analyse_upload(predictor, "huge.png", png(np.zeros((100, 100), np.uint8)), with_cam=False,
                       limits=UploadLimits(max_pixels=1000))
    assert not r.ok and "pixel limit" in r.message


def test_rgba_16bit_and_dicom_uploads_work(predictor):
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 120, 255
    rgba[10:30, 10:50, 3] = 0  # transparent hole
    deep = (np.arange(50 * 50, dtype=np.uint16).reshape(50, 50) * 20).astype(np.uint16)
    for name, data in [("rgba.png", png(rgba, "RGBA")), ("deep.png", png(deep)), ("slice.dcm", dicom(with_pixels=True))]:
        r = analyse_upload(predictor, name, data, with_cam=False)
        assert r.ok, r.message
        assert r.image.shape == (64, 64) and r.image.max() > r.image.min()
    assert Image.open(io.BytesIO(png(deep))).mode.startswith("I;16")


def test_unexpected_errors_become_a_plain_message_and_are_logged(predictor, ct_png, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(predictor, "predict_images", boom)
    with caplog.at_level(logging.ERROR, logger="lungcnn.webapp.uploads"):
        r = analyse_upload(predictor, "x.png", ct_png, with_cam=False)
    assert not r.ok and "unexpected error" in r.message and "internal detail" not in r.message
    assert "internal detail" in caplog.text  # the traceback stays on the server
    monkeypatch.undo()
    assert analyse_upload(predictor, "y.png", ct_png, with_cam=False).ok


def test_a_path_in_the_upload_name_is_dropped(predictor, ct_png):
    assert analyse_upload(predictor, "../../etc/passwd.png", ct_png, with_cam=False).name == "passwd.png"


# -- Grad-CAM --------------------------------------------------------------------------------------------
def test_gradcam_map_is_a_finite_unit_map_that_varies(predictor, ct_png):
    r = analyse_upload(predictor, "ct.png", ct_png, with_cam=True)
    assert r.ok and r.overlay is not None
    assert r.heatmap.shape == (64, 64) and np.isfinite(r.heatmap).all()
    assert r.heatmap.min() >= 0.0 and r.heatmap.max() <= 1.0 and r.heatmap.std() > 0.01
    assert r.overlay.shape == (64, 64, 3) and r.overlay.dtype == np.uint8


def test_gradcam_leaves_the_network_unchanged_and_works_when_frozen(predictor, ct_png):
    net = copy.deepcopy(predictor.net)
    for p in net.backbone.parameters():  # as after a frozen-backbone fine-tune
        p.requires_grad_(False)
    frozen = Predictor(predictor.spec, net)
    image = frozen.load(ct_png)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    malignant, benign = gradcam(frozen, image, towards="malignant"), gradcam(frozen, image, towards="benign")
    assert malignant.layer == "backbone.conv_head" and malignant.target == "malignant"
    assert max(malignant.heatmap.std(), benign.heatmap.std()) > 0.01  # one side has evidence on a real image
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters()) and not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with torch.no_grad():  # new weights (negated logit) must not be explained by the old ones
        net.head[-1].weight.neg_()
        net.head[-1].bias.neg_()
    np.testing.assert_allclose(gradcam(frozen, image, towards="malignant").heatmap, benign.heatmap, atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        gradcam(frozen, image.astype(np.float32))


# -- table, CSV and model card ---------------------------------------------------------------------------
def test_results_table_and_csv(predictor, ct_png):
    results = [analyse_upload(predictor, "a.png", ct_png, with_cam=False),
               analyse_upload(predictor, "=cmd.png", b"", with_cam=False)]
    table = pd.read_csv(io.BytesIO(results_csv(predictor, results)), keep_default_na=False)
    # The page's download is lungcnn's prediction schema, cut to what the page shows.
    assert list(table.columns) == schema.columns(predictor.task, shown_only=True)
    assert list(table.columns) == ["file", "decision", "in_domain", "lungs_in_view", "probability_benign",
                                   "probability_malignant", "error"]
    assert float(table.loc[0, "probability_malignant"]) == pytest.approx(results[0].p_malignant)
    assert table.loc[0, "decision"] == results[0].prediction.decision and table.loc[0, "error"] == ""
    assert table.loc[1, "probability_malignant"] == "" and "empty" in table.loc[1, "error"]
    assert list(table["file"]) == ["a.png", "'=cmd.png"]  # a formula-looking name stays text in a spreadsheet
    shown = display_table(predictor, results)  # the page's table: the same columns, written for people
    assert list(shown.columns) == ["file", "decision", "in_domain", "lungs_in_view", "P(benign)", "P(malignant)", "error"]
    assert shown.loc[0, "P(malignant)"] == format_percent(results[0].p_malignant) and shown.loc[1, "P(malignant)"] == ""
    assert format_percent(0.0) == "< 0.1%" and format_percent(1.0) == "> 99.9%" and format_percent(0.2111) == "21.1%"


def test_model_card_says_what_is_known_and_what_is_not(predictor, calibrated_ckpt):
    card = model_card(predictor)
    assert "not a diagnosis" in card["intended_use"] and "clinician" in card["intended_use"]
    assert card["details"]["Test results"] == "not recorded" and card["metrics"] == {}
    assert card["details"]["Calibration"].startswith("none")
    assert card["details"]["Image size the model sees"] == "64 x 64 pixels"
    cal = Predictor.from_checkpoint(calibrated_ckpt)
    spec = cal.spec.replace(data={"note": "synthetic demo data (drawn phantoms)"}, metrics={"roc_auc": "0.912"})
    card = model_card(Predictor(spec, cal.net, cal.backend))
    assert card["synthetic"] and "synthetic" in card["warning"]
    assert "training images" in card["details"]["Out-of-domain check"] and "series" in card["details"]["Out-of-domain check"]
    assert "cannot tell" in model_card(predictor)["details"]["Out-of-domain check"]  # uncalibrated: no guard
    assert card["details"]["Lung check"].startswith(("on", "off"))
    assert card["details"]["Calibration"].startswith("temperature scaling")
    assert "at or above" in card["details"]["Decision threshold"]
    assert card["details"]["Series decision"] == (f"mean of the 3 highest slice probabilities of the slices judged; malignant at "
                                                  f"or above {spec.decision.threshold:.1%} (the slice threshold)")
    fitted = spec.replace(series=dataclasses.replace(spec.series, threshold=0.42))
    fitted_card = model_card(Predictor(fitted, cal.net, cal.backend))
    assert "at or above 42.0% (its own threshold" in fitted_card["details"]["Series decision"]
    assert card["metrics"] == {"ROC AUC": "0.912"}


def test_checkpoint_choice_order(tmp_path):
    demo = tmp_path / "outputs/demo/checkpoints"
    demo.mkdir(parents=True)
    (demo / "best.ckpt").write_bytes(b"x")
    assert choose_checkpoint(["--ckpt", "a.ckpt"], {"LUNGCNN_CKPT": "b.ckpt"}, tmp_path) == Path("a.ckpt")
    assert choose_checkpoint(["--ckpt=a.ckpt"], {}, tmp_path) == Path("a.ckpt")
    assert choose_checkpoint([], {"LUNGCNN_CKPT": "b.ckpt"}, tmp_path) == Path("b.ckpt")
    assert choose_checkpoint([], {}, tmp_path) == demo / "best.ckpt"
    (demo / "best.calibrated.ckpt").write_bytes(b"x")
    assert choose_checkpoint([], {}, tmp_path) == demo / "best.calibrated.ckpt"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "lungcnn-iqothnccd-binary.ckpt").write_bytes(b"x")  # a reference model comes first
    assert choose_checkpoint([], {}, tmp_path) == tmp_path / "models" / "lungcnn-iqothnccd-binary.ckpt"
    (tmp_path / "models" / "lungcnn-chestct-binary.ckpt").write_bytes(b"x")  # the multi-source one before it
    assert choose_checkpoint([], {}, tmp_path) == tmp_path / "models" / "lungcnn-chestct-binary.ckpt"


# -- the page through Streamlit's AppTest ---------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_backoff():
    """Wrong passwords here must not slow down the next test (the process-wide back-off outlives a test)."""
    SHARED_BACKOFF.reset()
    yield
    SHARED_BACKOFF.reset()


def page(monkeypatch, ckpt: Path, secrets: dict):
    """The page, not yet run; `secrets` replace .streamlit/secrets.toml (a developer's own file stays out)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LUNGCNN_CKPT", str(ckpt))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.secrets = secrets
    return at


def sign_in(at, password: str = PASSWORD):
    at.text_input[0].input(password)
    next(b for b in at.button if b.label == "Sign in").click().run()
    assert not at.exception, at.exception
    return at


def run_page(monkeypatch, ckpt: Path, files=None, with_cam: bool = True):
    at = page(monkeypatch, ckpt, {"lungcnn": {"password_hash": PAGE_HASH}}).run()
    assert not at.exception, at.exception
    sign_in(at)
    if files is not None:
        if not with_cam:
            at.toggle[0].set_value(False)
        at.file_uploader[0].set_value(files)
        at.run()
        assert not at.exception, at.exception
    return at


def test_page_renders_with_a_checkpoint(monkeypatch, calibrated_ckpt):
    at = run_page(monkeypatch, calibrated_ckpt)
    assert not at.error
    assert "Decision support, not a diagnosis" in at.info[0].value
    assert at.file_uploader[0].accept_multiple_files
    assert set(at.file_uploader[0].allowed_type) >= {".png", ".jpg", ".dcm", ".tiff"}
    assert at.toggle[0].value is True  # heat map on by default
    assert any("Calibrated means" in c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("problem", ["missing", "broken"])
def test_a_missing_or_broken_checkpoint_shows_what_to_do(monkeypatch, tmp_path, problem):
    ckpt = tmp_path / "model.ckpt"
    if problem == "broken":
        ckpt.write_bytes(b"not a checkpoint")
    at = run_page(monkeypatch, ckpt)
    assert "could not be loaded" in at.error[0].value
    assert any("make demo" in m.value and "LUNGCNN_CKPT" in m.value for m in at.markdown)
    assert not at.file_uploader


def test_page_upload_shows_results_and_per_file_errors(monkeypatch, calibrated_ckpt, ct_png):
    files = [("scan.png", ct_png, "image/png"), ("broken.jpg", b"\xff\xd8\xff garbage", "image/jpeg")]
    at = run_page(monkeypatch, calibrated_ckpt, files)
    errors = [plain(e.value) for e in at.error]
    assert any(e.startswith("broken.jpg:") for e in errors), errors
    assert [m.label for m in at.metric] == ["Probability of malignancy"]
    assert at.metric[0].value.endswith("%")
    assert any(m.value.startswith("Result:") and ("MALIGNANT" in m.value or "BENIGN" in m.value) for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["file"]) == ["scan.png", "broken.jpg"] and table.loc[1, "error"]
    assert len(at.get("download_button")) == 1
    assert len(at.get("image")) == 2  # the model's view and the heat map, for the one good file


def test_page_without_heat_map(monkeypatch, calibrated_ckpt, ct_png):
    at = run_page(monkeypatch, calibrated_ckpt, [("scan.png", ct_png, "image/png")], with_cam=False)
    assert len(at.get("image")) == 1 and not at.error


def test_page_reads_jpeg_png_in_the_export_window_chosen(monkeypatch, calibrated_ckpt, ct_png):
    """The sidebar's export window re-windows an 8-bit upload as training reads a source exported that way: the
    model's view (and so the probability) changes, and the choice reaches every analysis of the session."""
    files = [("scan.png", ct_png, "image/png")]
    at = run_page(monkeypatch, calibrated_ckpt, files)
    box = at.sidebar.selectbox[0]
    assert box.value == "As they are" and len(box.options) == 3
    as_is = at.dataframe[0].value.loc[0, "P(malignant)"]
    box.set_value("Soft-tissue window (level 40, width 400 HU)").run()  # the tiny model's window is a lung window
    assert not at.exception, at.exception
    soft = at.dataframe[0].value.loc[0, "P(malignant)"]
    assert soft != as_is, (as_is, soft)


# -- sign-in --------------------------------------------------------------------------------------------------
def nothing_of_the_page(at) -> bool:
    """No uploader, model card, settings or results: only the title, the disclaimer and sign-in."""
    return not (at.file_uploader or at.expander or at.toggle or at.dataframe or at.metric or at.get("download_button"))


def test_password_sign_in_wrong_refused_right_admits_then_sign_out(monkeypatch, calibrated_ckpt, caplog):
    at = page(monkeypatch, calibrated_ckpt, {"lungcnn": {"password_hash": PAGE_HASH}})
    with caplog.at_level(logging.INFO, logger="lungcnn"):
        at.run()
        assert not at.exception and nothing_of_the_page(at)
        assert at.text_input[0].label == "Password" and at.text_input[0].proto.type == at.text_input[0].proto.PASSWORD
        sign_in(at, "not the password at all")
        assert [e.value for e in at.error] == ["Wrong password."] and nothing_of_the_page(at)
        sign_in(at)
        assert not at.error and at.file_uploader and at.expander  # the uploader and the model card
        assert any("Signed in with the page's password" in c.value for c in at.sidebar.caption)
        next(b for b in at.sidebar.button if b.label == "Sign out").click().run()
        assert nothing_of_the_page(at) and at.text_input[0].label == "Password"
    assert "sign-in failed: wrong password, 1 in a row" in caplog.text and "sign-in succeeded: password" in caplog.text
    assert "signed out" in caplog.text
    assert "not the password at all" not in caplog.text and PASSWORD not in caplog.text


def test_repeated_wrong_passwords_are_slowed_down_on_the_page(monkeypatch, calibrated_ckpt):
    at = page(monkeypatch, calibrated_ckpt, {"lungcnn": {"password_hash": PAGE_HASH}}).run()
    sign_in(at, "wrong password one")
    sign_in(at, "wrong password two")
    sign_in(at)  # the right one, but too soon after two failures
    assert "please wait" in at.error[0].value and nothing_of_the_page(at)


def test_single_sign_on_shows_a_login_button_and_admits_a_signed_in_user(monkeypatch, calibrated_ckpt, caplog):
    # Streamlit's OIDC redirect needs a provider, which tests here cannot reach: the button, the configuration
    # check and a user Streamlit reports as signed in are what is tested.
    at = page(monkeypatch, calibrated_ckpt, {"auth": OIDC})
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception and nothing_of_the_page(at)
    assert [b.label for b in at.button] == ["Sign in with your hospital account"] and not at.text_input
    at.user = {"is_logged_in": True, "email": "dr.a@hospital.example", "name": "Dr A"}
    with caplog.at_level(logging.INFO, logger="lungcnn"):
        at.run()
    assert not at.exception and at.file_uploader
    assert any("dr.a@hospital.example" in plain(c.value) for c in at.sidebar.caption)
    assert "sign-in succeeded: single sign-on as dr.a@hospital.example" in caplog.text


def test_no_sign_in_configured_is_open_on_loopback_only(monkeypatch, calibrated_ckpt):
    import streamlit as st

    get_option = st.get_option

    def serve_on(address):
        monkeypatch.setattr(st, "get_option", lambda key: address if key == "server.address" else get_option(key))
        at = page(monkeypatch, calibrated_ckpt, {"unrelated": {"x": 1}}).run()
        assert not at.exception, at.exception
        return at

    at = serve_on("127.0.0.1")
    assert at.file_uploader and any("answers only on this computer" in c.value for c in at.caption)
    for address in ("0.0.0.0", "", None):  # e.g. a bare `streamlit run --server.address 0.0.0.0`: every interface
        at = serve_on(address)
        assert nothing_of_the_page(at) and not at.text_input and "no sign-in is configured" in at.error[0].value


def test_misconfigured_sign_in_shows_nothing(monkeypatch, calibrated_ckpt):
    at = page(monkeypatch, calibrated_ckpt, {"lungcnn": {"password_hash": "hunter2"}}).run()
    assert not at.exception and nothing_of_the_page(at) and "misconfigured" in at.error[0].value


# -- patient data ----------------------------------------------------------------------------------------------
def page_text(at) -> str:
    """Everything the page sent to the browser, element by element (protobuf text, incl. table data)."""
    chunks, todo = [], [at._tree]
    while todo:
        node = todo.pop()
        proto = getattr(node, "proto", None)
        if proto is not None:
            chunks.append(str(proto))
            chunks.append(proto.SerializeToString().decode("utf-8", "replace"))
        children = getattr(node, "children", {})
        todo.extend(children.values() if isinstance(children, dict) else children)
    return "\n".join(chunks)


def test_dicom_patient_tags_never_reach_the_page_logs_or_csv(monkeypatch, calibrated_ckpt, caplog, capfd):
    csv = []
    make_csv = uploads.results_csv
    monkeypatch.setattr(uploads, "results_csv", lambda predictor, results: csv.append(make_csv(predictor, results)) or csv[-1])
    files = [("slice.dcm", dicom(with_pixels=True, patient=True), "application/dicom"),
             ("truncated.dcm", dicom(with_pixels=True, patient=True, pixel_bytes=100), "application/dicom"),
             ("empty.dcm", dicom(with_pixels=False, patient=True), "application/dicom")]
    assert patient_values_in(files[0][1])  # the names are in the files ...
    with caplog.at_level(logging.DEBUG):
        at = run_page(monkeypatch, calibrated_ckpt, files)
    table = at.dataframe[0].value
    assert list(table["file"]) == ["slice.dcm", "truncated.dcm", "empty.dcm"]
    assert table.loc[0, "error"] == "" and table.loc[1, "error"] and table.loc[2, "error"]  # both paths: result, error
    text = page_text(at)
    # the scan finds what the page shows (a result, or the domain guard's sentence) ...
    assert "slice.dcm" in text and ("Result:" in text or "does not look like the lung CT slices" in text)
    assert patient_values_in(text) == []  # ... and no patient tag
    assert patient_values_in(caplog.text + capfd.readouterr().err) == []
    assert len(csv) == 1 and patient_values_in(csv[0]) == []
    # The CSV carries the page's table: the same rows and columns, numbers unformatted.
    back = pd.read_csv(io.BytesIO(csv[0]), keep_default_na=False, dtype=str)
    assert len(back) == len(table) and list(back["file"]) == list(table["file"])
    assert list(back["decision"]) == list(table["decision"]) and list(back["error"]) == list(table["error"])
    assert _as_shown(back.columns) == list(table.columns)


def _as_shown(columns) -> list[str]:
    """The download's schema columns as the page titles them: probability_<c> -> P(<c>)."""
    return [f"P({c.removeprefix('probability_')})" if c.startswith("probability_") else c for c in columns]


def test_the_csv_has_the_columns_the_page_shows(predictor, ct_png):
    results = [analyse_upload(predictor, "a.png", ct_png, with_cam=False)]
    shown, csv = display_table(predictor, results), pd.read_csv(io.BytesIO(results_csv(predictor, results)))
    assert list(csv.columns) == schema.columns(predictor.task, shown_only=True)
    assert _as_shown(csv.columns) == list(shown.columns)


def test_page_gives_no_result_for_an_image_out_of_domain(monkeypatch, calibrated_ckpt, ct_png):
    from pydicom.data import get_testdata_file

    from lungcnn.webapp.uploads import NOT_IN_DOMAIN
    from tests.conftest import photo_png

    mr = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    files = [("scan.png", ct_png, "image/png"), ("brain.dcm", mr, "application/dicom"), ("photo.png", photo_png(), "image/png")]
    at = run_page(monkeypatch, calibrated_ckpt, files)
    assert [w.value for w in at.warning if "synthetic" not in w.value] == [NOT_IN_DOMAIN, NOT_IN_DOMAIN]
    assert [m.label for m in at.metric] == ["Probability of malignancy"]  # the CT slice only: no number for the others
    assert len(at.get("image")) == 2 + 2  # the slice and its heat map; the two flagged images without one
    table = at.dataframe[0].value
    assert list(table["decision"][1:]) == ["out of domain"] * 2 and list(table["in_domain"]) == ["true", "false", "false"]
    assert (table.iloc[1:][[c for c in table.columns if c.startswith("P(")]] == "").all().all()


def test_page_runs_an_int8_onnx_model_without_heat_maps(monkeypatch, calibrated_ckpt, ct_png, tiny_root):
    from lungcnn.inference.quantize import quantize_onnx

    # min_agreement 0: this test is about the page serving an int8 file; parity is tested in test_predict.
    model = quantize_onnx(calibrated_ckpt, data_root=tiny_root, calibration_images=8, min_agreement=0)[0]
    at = run_page(monkeypatch, model, [("scan.png", ct_png, "image/png")])
    assert not at.error and at.toggle[0].value is False and at.toggle[0].disabled
    from lungcnn.webapp.uploads import format_percent

    served = Predictor.from_checkpoint(model, "auto")
    expected = served.predict_images(served.load(ct_png, "scan.png")[None], ["scan.png"])[0]
    assert at.metric[0].value == format_percent(expected.probabilities["malignant"])
    assert len(at.get("image")) == 1  # the model's view only
