"""The page with a whole series: the logic (`lungcnn.webapp.study`) and the Streamlit page through AppTest.

A series arrives as many DICOM files in no order or as one zip: the series result comes first, then the slices
ranked by suspicion with heat maps (only for those shown), and a slider through the series in body order.
No DICOM patient tag reaches the page, its CSV or the logs."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungcnn.data.synthetic.dicom import PATIENT, ct_series
from lungcnn.inference import schema
from lungcnn.inference.predictor import Predictor
from lungcnn.webapp.study import SHOWN_SLICES, add_heatmaps, analyse_study, study_csv

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
PHI = [*PATIENT.values(), "Doe", "Jane"]
N = 7


@pytest.fixture(scope="module")
def predictor(trained_ckpt) -> Predictor:
    return Predictor.from_checkpoint(trained_ckpt, with_net=True)


@pytest.fixture(scope="module")
def series_files() -> list[tuple[str, bytes]]:
    """N slices in body order, named as a PACS names them, in no particular order."""
    files = ct_series(N, 64, seed=21)
    order = [3, 0, 6, 2, 5, 1, 4]
    return [(f"IM{k:04d}", files[k]) for k in order]


def _zip(files, extra=()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in [*files, *extra]:
            z.writestr(name, data)
    return buf.getvalue()


def test_study_orders_ranks_and_explains_only_the_shown_slices(predictor, series_files, caplog):
    with caplog.at_level(logging.DEBUG, logger="lungcnn"):
        study = analyse_study(predictor, [*series_files, ("broken.dcm", b"\0" * 128 + b"DICM junk")])
    assert not study.refused
    (series,) = [s for s in study.series if len(s.slices) == N]
    assert [r.name for r in series.slices] == [f"IM{k:04d}" for k in range(N)]  # body order, from the positions
    result = series.result
    p = np.array([r.p_malignant for r in series.slices])
    assert result.probability == pytest.approx(np.sort(p)[-3:].mean())  # the default rule: mean of the top 3
    assert result.ranked == sorted(range(N), key=lambda i: -p[i]) and result.most_suspicious == result.ranked[0]
    assert all(r.overlay is None for r in series.slices)  # no heat map until shown
    add_heatmaps(predictor, series, result.ranked[:2])
    assert [r.overlay is not None for r in series.slices] == [i in result.ranked[:2] for i in range(N)]
    table = pd.read_csv(io.BytesIO(study_csv(predictor, study)), keep_default_na=False)
    assert list(table.columns) == schema.series_columns("malignant") and len(table) == 2
    assert table.loc[1, "n_unreadable"] == 1 and table.loc[1, "decision"] == ""
    assert not [v for v in PHI if v in table.to_csv() + caplog.text]


def test_a_zip_study_matches_the_files_and_a_tricky_zip_is_refused(predictor, series_files):
    files = analyse_study(predictor, series_files).series[0].result
    zipped = analyse_study(predictor, [("study.zip", _zip(series_files, [("__MACOSX/._IM0000", b"x")])),
                                       ("trick.zip", _zip([("../../evil.dcm", b"1")]))])
    (series,) = zipped.series
    assert series.result.probability == pytest.approx(files.probability)
    assert [Path(n).name for n in series.result.names] == [Path(n).name for n in files.names]
    (refused,) = zipped.refused
    assert refused.name == "trick.zip" and "'..'" in refused.message


def _page_text(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "subheader", "metric"):
        for element in at.get(kind):
            parts.append(str(getattr(element, "value", "")) + str(getattr(element, "label", "")))
    return "\n".join(parts)


def test_page_shows_the_series_result_ranked_slices_and_a_slider(monkeypatch, trained_ckpt, series_files, caplog):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LUNGCNN_CKPT", str(trained_ckpt))
    with caplog.at_level(logging.DEBUG):
        at = AppTest.from_file(str(APP), default_timeout=120).run()
        at.radio[0].set_value(at.radio[0].options[1]).run()
        at.file_uploader[0].set_value([(n, d, "application/dicom") for n, d in series_files]).run()
        assert not at.exception, at.exception
        text = _page_text(at)
        assert at.metric[0].label == "Series probability of malignant"  # the series result comes first
        assert [m.label for m in at.metric[1:]] == ["Probability of malignancy"] * (SHOWN_SLICES + 1)
        assert "Most suspicious slice" in text and "mean of the 3 highest slice probabilities" in text
        shown = [m.value.lstrip("#").strip().replace("\\", "") for m in at.markdown if m.value.startswith("##### IM")]
        slider = at.slider[0]
        assert (slider.min, slider.max) == (1, N)
        assert shown[-1] == f"IM{slider.value - 1:04d}" == shown[0]  # the slider opens on the most suspicious slice
        assert len(at.get("image")) == 2 * (SHOWN_SLICES + 1)  # model's view + heat map per shown slice
        slider.set_value(1).run()
        shown = [m.value.lstrip("#").strip().replace("\\", "") for m in at.markdown if m.value.startswith("##### IM")]
        assert shown[-1] == "IM0000"
        assert len(at.get("download_button")) == 1
    assert not [v for v in PHI if v in text + _page_text(at) + caplog.text]


def test_page_says_it_cannot_judge_a_series_unlike_its_training_images(monkeypatch, calibrated_ckpt, series_files, tmp_path):
    import dataclasses

    from streamlit.testing.v1 import AppTest

    from lungcnn.models.checkpoint import load_checkpoint, save_checkpoint

    spec, state = load_checkpoint(calibrated_ckpt)
    ckpt = tmp_path / "strict.ckpt"  # a guard that accepts nothing
    save_checkpoint(ckpt, spec.replace(guard=dataclasses.replace(spec.guard, threshold=1e-9)), state)
    monkeypatch.setenv("LUNGCNN_CKPT", str(ckpt))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.radio[0].set_value(at.radio[0].options[1]).run()
    at.file_uploader[0].set_value([(n, d, "application/dicom") for n, d in series_files]).run()
    assert not at.exception, at.exception
    assert any("Cannot judge this series" in w.value for w in at.warning)
    assert not [m for m in at.metric if m.label.startswith("Series probability")]
    assert not [m for m in at.markdown if m.value.startswith("Series result:")]


def test_page_does_not_judge_slices_without_lungs(monkeypatch, trained_ckpt, tmp_path):
    import dataclasses

    from PIL import Image
    from streamlit.testing.v1 import AppTest

    from lungcnn.models.checkpoint import load_checkpoint, save_checkpoint
    from lungcnn.webapp.uploads import NO_LUNGS_IN_VIEW
    from tests.test_lungcrop import NOT_CHEST, _phantom

    spec, state = load_checkpoint(trained_ckpt)
    ckpt = tmp_path / "lungs.ckpt"
    save_checkpoint(ckpt, spec.replace(preprocessing=dataclasses.replace(spec.preprocessing, lung_check=True)), state)
    slices = {"1_chest": _phantom(), **{f"{i + 2}_{k}": make() for i, (k, make) in enumerate(NOT_CHEST.items())}}
    uploads = []
    for name, image in slices.items():
        buf = io.BytesIO()
        Image.fromarray((image * 255).astype(np.uint8)).save(buf, format="PNG")
        uploads.append((f"{name}.png", buf.getvalue(), "image/png"))
    monkeypatch.setenv("LUNGCNN_CKPT", str(ckpt))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.radio[0].set_value(at.radio[0].options[1]).run()
    at.file_uploader[0].set_value(uploads).run()
    assert not at.exception, at.exception
    assert "3 without lungs in view (not judged)" in _page_text(at)
    shown = [m.value.lstrip("#").strip().replace("\\", "") for m in at.markdown if m.value.startswith("##### ")]
    assert shown[:2] == ["The 1 most suspicious slices", "1_chest.png"]  # only the chest slice is ranked
    at.slider[0].set_value(3).run()  # the neck slice, scrolled to: the image, one sentence, no probability
    assert any(NO_LUNGS_IN_VIEW in w.value for w in at.warning)
    assert len([m for m in at.metric if m.label == "Probability of malignancy"]) == 1
