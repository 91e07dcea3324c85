"""The clinicians' page: upload lung CT images, see benign/malignant with a calibrated probability.

Run: `make app` or `streamlit run app/streamlit_app.py -- --ckpt PATH` (else $LUNGCNN_CKPT, else the
demo checkpoint). Only layout and wording live here; the logic is in `lungcnn.inference.uploads`.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import streamlit as st

from lungcnn.inference.predictor import Predictor
from lungcnn.inference.uploads import (
    CALIBRATED_MEANS,
    ENV_CHECKPOINT,
    MIB,
    UNCALIBRATED_MEANS,
    UPLOAD_TYPES,
    UploadLimits,
    UploadResult,
    analyse_upload,
    choose_checkpoint,
    decision_explanation,
    display_table,
    headline,
    model_card,
    results_csv,
)

log = logging.getLogger("lungcnn.app")
ROOT = Path(__file__).resolve().parents[1]
DISCLAIMER = ("**Decision support, not a diagnosis.** This tool gives a second opinion on single CT images for a "
              "clinician. It can be wrong; the decision on diagnosis and care stays with the clinician.")
COLOURS = {"malignant": "red", "benign": "green"}


@st.cache_resource(show_spinner="Loading the model…")
def load_predictor(path: str, stamp: tuple[int, int]) -> Predictor:
    """Once per checkpoint file version (`stamp` = mtime, size), shared by all sessions.

    Logits from the fastest backend here (onnxruntime on CPU); the PyTorch network stays for Grad-CAM."""
    return Predictor.from_checkpoint(path, backend="auto", with_net=True)


def md(text: str) -> str:
    """Show a file name or message literally, not as Markdown."""
    return re.sub(r"([\\`*_{}\[\]()<>#+\-.!|~:$])", r"\\\1", text)


def checkpoint_help(path: Path, problem: str) -> None:
    st.error(f"The model could not be loaded. {md(problem)}")
    st.markdown(
        "**What to do**\n\n"
        "- To try the tool with the demo model, run `make demo` in the project folder, then reload this page.\n"
        f"- To use your own model, set the environment variable `{ENV_CHECKPOINT}=/path/to/model.ckpt`, or start the "
        "page with `make app CKPT=/path/to/model.ckpt`.\n"
        f"- Model file looked for: `{path}`"
    )


def sidebar(predictor: Predictor, ckpt: Path) -> bool:
    with st.sidebar:
        st.header("Settings")
        has_net = predictor.net is not None  # an exported .onnx model has no gradients to draw a heat map from
        with_cam = st.toggle("Show heat map", value=has_net, disabled=not has_net,
                             help="Colours the areas of the image that most influenced the result (Grad-CAM)."
                             + ("" if has_net else " Needs the model's .ckpt file, not its .onnx export."))
        st.header("How to read the results")
        st.markdown(
            "- **Probability of malignancy**: how likely the model thinks the image shows a malignant lesion.\n"
            "- **Threshold**: at or above it, the image is reported as malignant.\n"
            "- **Heat map**: red areas influenced the result most; blue areas little.\n"
        )
        st.caption(CALIBRATED_MEANS if predictor.spec.is_calibrated else UNCALIBRATED_MEANS)
        st.caption(f"Model file: `{ckpt.name}`")
    return with_cam


def show_model_card(predictor: Predictor) -> None:
    card = model_card(predictor)
    if card["warning"]:
        st.warning(card["warning"], icon=":material/warning:")
    with st.expander("About this model (model card)"):
        st.markdown(f"**Intended use.** {card['intended_use']}")
        st.markdown("\n".join(f"- **{label}:** {md(value)}" for label, value in card["details"].items()))
        if card["metrics"]:
            st.markdown("**Test results** (on the held-out test images)")
            st.markdown("\n".join(f"- {md(label)}: {value}" for label, value in card["metrics"].items()))


def analyse_all(predictor: Predictor, files: list, with_cam: bool, ckpt_key: tuple) -> list[UploadResult]:
    """Analyse each file once per (checkpoint, file, heat map on/off); reruns reuse the results."""
    cache: dict = st.session_state.setdefault("analyses", {})
    limits = UploadLimits(max_bytes=int(st.get_option("server.maxUploadSize")) * MIB)
    keys = [(ckpt_key, f.file_id, with_cam) for f in files]
    for stale in set(cache) - set(keys):
        del cache[stale]
    todo = [(k, f) for k, f in zip(keys, files) if k not in cache]
    if todo:
        progress = st.progress(0.0, text="Analysing…")
        for i, (key, f) in enumerate(todo):
            cache[key] = analyse_upload(predictor, f.name, f.getvalue(), with_cam=with_cam, limits=limits)
            progress.progress((i + 1) / len(todo), text=f"Analysed {i + 1} of {len(todo)}")
        progress.empty()
    return [cache[k] for k in keys]


def show_result(predictor: Predictor, r: UploadResult, with_cam: bool) -> None:
    with st.container(border=True):
        st.markdown(f"##### {md(r.name)}")
        if not r.ok:
            st.error(md(r.message or "This file could not be analysed."))
            return
        pred = r.prediction
        left, middle, right = st.columns([1, 1, 1.4], gap="medium")
        left.image(r.image, caption="The image as the model sees it", width="stretch", clamp=True)
        if with_cam and r.overlay is not None:
            middle.image(r.overlay, caption=f"Heat map: areas that most influenced the result “{pred.decision}”", width="stretch")
        if r.cam_note and with_cam:
            middle.caption(r.cam_note)
        with right:
            colour = COLOURS.get(pred.decision, "blue")
            st.markdown(f"Result: :{colour}-badge[**{pred.decision.upper()}**]")
            st.metric(*headline(predictor, r))
            st.markdown(decision_explanation(predictor, r))
            st.caption(("Calibrated: yes. " + CALIBRATED_MEANS) if r.calibrated else ("Calibrated: no. " + UNCALIBRATED_MEANS))


def main() -> None:
    st.set_page_config(page_title="Lung CT image check", page_icon="🫁", layout="wide")
    st.title("Lung CT image check")
    st.info(DISCLAIMER, icon=":material/stethoscope:")
    ckpt = choose_checkpoint(sys.argv[1:], root=ROOT)
    try:
        stat = ckpt.stat()
        predictor = load_predictor(str(ckpt), (stat.st_mtime_ns, stat.st_size))
    except FileNotFoundError:
        checkpoint_help(ckpt, "No model file was found.")
        return
    except Exception as e:  # a foreign, broken or unsafe file: say what to do, never a traceback
        log.exception("could not load checkpoint %s", ckpt)
        checkpoint_help(ckpt, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return
    with_cam = sidebar(predictor, ckpt)
    show_model_card(predictor)
    files = st.file_uploader("Upload lung CT images (JPEG, PNG, BMP, TIFF or DICOM); several at once is fine",
                             type=list(UPLOAD_TYPES), accept_multiple_files=True)
    if not files:
        st.caption("Nothing is stored: uploaded images stay in this session's memory and are gone when the page closes.")
        return
    results = analyse_all(predictor, files, with_cam, (str(ckpt), stat.st_mtime_ns))
    st.subheader("Results")
    bad = sum(not r.ok for r in results)
    if bad:
        st.warning(f"{bad} of {len(results)} files could not be analysed; the reason is given below each one.")
    st.dataframe(display_table(predictor, results), hide_index=True, width="stretch")
    st.download_button("Download results (CSV)", results_csv(predictor, results), file_name="lungcnn_results.csv",
                       mime="text/csv", on_click="ignore")
    for r in results:
        show_result(predictor, r, with_cam)


main()
