"""The clinicians' page: upload lung CT images, see benign/malignant with a calibrated probability.

Run: `make app` or `streamlit run app/streamlit_app.py -- --ckpt PATH` (else $LUNGCNN_CKPT, else the
reference model in models/, else the demo checkpoint). Only layout and wording live here; the logic is in
`lungcnn.webapp.uploads` (uploads) and
`lungcnn.webapp` (sign-in, who may see the page without it).
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from lungcnn.data.rendering import parse_export_window
from lungcnn.errors import LungCNNInputError
from lungcnn.inference.predictor import NO_LUNGS, OUT_OF_DOMAIN, Predictor
from lungcnn.webapp import logs
from lungcnn.webapp.auth import Access, AuthSettings, access, session_backoff, try_password
from lungcnn.webapp.study import (
    SHOWN_SLICES,
    Study,
    StudySeries,
    add_heatmaps,
    analyse_study,
    series_explanation,
    study_csv,
)
from lungcnn.webapp.uploads import (
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
    format_percent,
    headline,
    model_card,
    not_judged_message,
    results_csv,
)

log = logging.getLogger("lungcnn.app")
ROOT = Path(__file__).resolve().parents[1]
DISCLAIMER = ("**Decision support, not a diagnosis.** This tool gives a second opinion on single CT images for a "
              "clinician. It can be wrong; the decision on diagnosis and care stays with the clinician.")
COLOURS = {"malignant": "red", "benign": "green", "not_malignant": "green", "normal": "green"}
HOW_TO_SIGN_IN = "see “Deploying on a hospital network” in the README"


# -- sign-in -------------------------------------------------------------------------------------------------
def configured_secrets() -> dict:
    try:
        return st.secrets.to_dict()
    except StreamlitSecretNotFoundError:  # no secrets.toml: nothing configured
        return {}


def who() -> str:
    """This session for the log: a random tag and the client address (no names, nothing uploaded)."""
    tag = st.session_state.setdefault("session_tag", secrets.token_hex(4))
    ip = st.context.ip_address
    return f"session {tag}, client {ip if isinstance(ip, str) else 'this computer'}"


def oidc_user() -> str | None:
    """The signed-in single sign-on user's e-mail (or subject), else None."""
    if not st.user.get("is_logged_in"):
        return None
    return str(st.user.get("email") or st.user.get("sub") or "unknown user")


def signed_in(settings: AuthSettings) -> bool:
    """Whether the page may show more than its title; shows the sign-in form or the refusal otherwise."""
    mode = access(settings, st.get_option("server.address"), dict(st.context.headers))
    if mode is Access.OPEN:
        st.caption("No sign-in is set up: this page answers only on this computer.")
        return True
    if mode is Access.REFUSED:
        if not st.session_state.get("refusal_logged"):
            log.warning("page refused: reachable from the network with no sign-in configured (%s)", who())
            st.session_state["refusal_logged"] = True
        st.error("This page can be reached from other computers, but no sign-in is configured, so it shows "
                 f"nothing. For the administrator: {HOW_TO_SIGN_IN}.")
        return False
    if st.session_state.get("signed_in") == "password":
        return True
    user = oidc_user() if settings.providers else None
    if user:
        if st.session_state.get("signed_in") != user:
            log.info("sign-in succeeded: single sign-on as %s (%s)", user, who())
            st.session_state["signed_in"] = user
        return True
    sign_in_form(settings)
    return False


def sign_in_form(settings: AuthSettings) -> None:
    st.subheader("Sign in")
    for name in settings.providers:
        label = "Sign in with your hospital account" if name == "default" else f"Sign in with {name}"
        if st.button(label, key=f"login_{name}", type="primary"):
            st.login(None if name == "default" else name)
    if not settings.password_hash:
        return
    with st.form("password_sign_in", clear_on_submit=True):  # the typed password is not kept in the session
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        result = try_password(settings, password, st.session_state.setdefault("backoff", session_backoff()), who=who())
        if result.ok:
            st.session_state["signed_in"] = "password"
            st.rerun()
        st.error(result.message)


def sign_out_button() -> None:
    method = st.session_state.get("signed_in")
    if not method:
        return
    with st.sidebar:
        st.caption("Signed in with the page's password." if method == "password" else f"Signed in as {md(method)}.")
        if st.button("Sign out"):
            log.info("signed out (%s)", who())
            del st.session_state["signed_in"]
            if method != "password":
                st.logout()
            st.rerun()


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


# How a JPEG/PNG was exported -> `rendering.parse_export_window`; the model re-windows it as training read a
# source exported that way. DICOM always comes from Hounsfield units.
EXPORT_WINDOWS = {"As they are": "as_is", "Lung window (level −600, width 1500 HU)": "lung",
                  "Soft-tissue window (level 40, width 400 HU)": "mediastinal"}


def sidebar(predictor: Predictor, ckpt: Path) -> tuple[bool, str]:
    with st.sidebar:
        st.header("Settings")
        has_net = predictor.net is not None  # an exported .onnx model has no gradients to draw a heat map from
        with_cam = st.toggle("Show heat map", value=has_net, disabled=not has_net,
                             help="Colours the areas of the image that most influenced the result (Grad-CAM)."
                             + ("" if has_net else " Needs the model's .ckpt file, not its .onnx export."))
        export = st.selectbox("JPEG/PNG images were exported with", list(EXPORT_WINDOWS),
                              help="The display window your viewer or PACS used when it saved the JPEG or PNG files. "
                                   "The model then sees them as it saw its training images of that kind. DICOM "
                                   "files carry Hounsfield units and are always read from them.")
        st.header("How to read the results")
        st.markdown(
            "- **Probability of malignancy**: how likely the model thinks the image shows a malignant lesion.\n"
            "- **Threshold**: at or above it, the image is reported as malignant.\n"
            "- **Heat map**: red areas influenced the result most; blue areas little.\n"
        )
        st.caption(CALIBRATED_MEANS if predictor.spec.is_calibrated else UNCALIBRATED_MEANS)
        st.caption(f"Model file: `{ckpt.name}`")
    return with_cam, EXPORT_WINDOWS[export]


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
        log.info("analysed %d uploaded files (%s)", len(todo), who())
    return [cache[k] for k in keys]


def show_result(predictor: Predictor, r: UploadResult, with_cam: bool) -> None:
    with st.container(border=True):
        st.markdown(f"##### {md(r.name)}")
        if not r.ok:
            st.error(md(r.message or "This file could not be analysed."))
            return
        if not r.answered:  # not judged (no lungs in view, or out of domain): the image, one sentence, no number
            left, right = st.columns([1, 2.4], gap="medium")
            left.image(r.image, caption="The image as the model sees it", width="stretch", clamp=True)
            right.warning(not_judged_message(r), icon=":material/block:")
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
            st.markdown(f"Result: :{colour}-badge[**{pred.decision.replace('_', ' ').upper()}**]")
            st.metric(*headline(predictor, r))
            st.markdown(decision_explanation(predictor, r))
            st.caption(("Calibrated: yes. " + CALIBRATED_MEANS) if r.calibrated else ("Calibrated: no. " + UNCALIBRATED_MEANS))


SERIES_MODE = "One patient's series (many slices, or a zip)"


def analyse_study_once(predictor: Predictor, files: list, ckpt_key: tuple) -> Study:
    """Analyse the uploaded series once per (checkpoint, files); reruns (the slider) reuse it and its heat maps."""
    cache: dict = st.session_state.setdefault("studies", {})
    key = (ckpt_key, tuple(f.file_id for f in files))
    if key not in cache:
        cache.clear()
        limits = UploadLimits(max_bytes=int(st.get_option("server.maxUploadSize")) * MIB)
        with st.spinner(f"Analysing {len(files)} uploaded files…"):
            cache[key] = analyse_study(predictor, [(f.name, f.getvalue()) for f in files], limits=limits)
    return cache[key]


def show_study(predictor: Predictor, study: Study, with_cam: bool) -> None:
    for r in study.refused:
        st.error(md(r.message or "This file could not be analysed."))
    if not study.series:
        st.warning("No images were found in the upload.")
        return
    st.download_button("Download series results (CSV)", study_csv(predictor, study), file_name="lungcnn_series.csv",
                       mime="text/csv", on_click="ignore")
    for i, series in enumerate(study.series):
        show_series(predictor, series, with_cam, i, len(study.series))


def show_series(predictor: Predictor, series: StudySeries, with_cam: bool, index: int, count: int) -> None:
    result = series.result
    n, bad, flagged = len(result.names), result.counts.get("n_unreadable", 0), result.counts.get("n_out_of_domain", 0)
    no_lungs = result.counts.get("n_no_lungs", 0)
    st.subheader(f"Series {index + 1} of {count}" if count > 1 else "Series result")
    with st.container(border=True):
        st.caption(f"Series: {md(result.key)} · {n} slices" + (f", {bad} could not be read" if bad else "")
                   + (f", {flagged} unlike the training images" if flagged else "")
                   + (f", {no_lungs} without lungs in view (not judged)" if no_lungs else ""))
        if result.decision is None:
            st.error(f"None of the {n} slices of this series could be read; the reasons are listed below.")
        elif result.decision == NO_LUNGS:
            st.warning(f"**Cannot judge this series**: none of its {n - bad} readable slices shows the lungs. No "
                       "probability is given for it.", icon=":material/block:")
        elif result.decision == OUT_OF_DOMAIN:
            st.warning(f"**Cannot judge this series**: {flagged} of its {n - bad} readable slices are unlike the images "
                       "the model was trained on (another modality, scanner, body part or window?). No probability is "
                       "given for it.", icon=":material/block:")
        else:
            colour = COLOURS.get(result.decision, "blue")
            st.markdown(f"Series result: :{colour}-badge[**{result.decision.replace('_', ' ').upper()}**]")
            st.metric(f"Series probability of {predictor.spec.series_target}", format_percent(result.probability))
            st.markdown(series_explanation(predictor, result))
    ranked = result.ranked[:SHOWN_SLICES]
    if with_cam:
        add_heatmaps(predictor, series, ranked)
    if ranked:
        st.markdown(f"##### The {len(ranked)} most suspicious slices"
                    + (" (most unlike normal chest CT first)" if result.ranked_by_novelty else ""))
        for i in ranked:
            show_result(predictor, series.slices[i], with_cam)
    if n > 1:
        st.markdown("##### Scroll through the series")
        position = st.slider("Slice, in body order", 1, n, value=(result.most_suspicious or 0) + 1, key=f"slice-{index}")
        if with_cam:
            add_heatmaps(predictor, series, [position - 1])
        show_result(predictor, series.slices[position - 1], with_cam)
    if bad:
        with st.expander(f"{bad} slices could not be read"):
            st.markdown("\n".join(f"- {md(r.message or r.name)}" for r in series.slices if not r.ok))


def main() -> None:
    st.set_page_config(page_title="Lung CT image check", page_icon="🫁", layout="wide")
    st.title("Lung CT image check")
    st.info(DISCLAIMER, icon=":material/stethoscope:")
    logs.configure()
    try:
        settings = AuthSettings.from_secrets(configured_secrets())
    except LungCNNInputError as e:
        log.error("sign-in configuration: %s", e)
        st.error(f"Sign-in is misconfigured, so the page shows nothing. For the administrator: {md(str(e))}.")
        return
    if not signed_in(settings):
        return
    sign_out_button()
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
    with_cam, export = sidebar(predictor, ckpt)
    predictor = predictor.with_export_window(parse_export_window(export))
    ckpt_key = (str(ckpt), stat.st_mtime_ns, export)
    show_model_card(predictor)
    if st.radio("What are you uploading?", ["Separate images", SERIES_MODE], horizontal=True) == SERIES_MODE:
        files = st.file_uploader("Upload all slices of one series (DICOM files from the PACS export, with or without "
                                 "a suffix), or one zip of them", type=None, accept_multiple_files=True, key="series")
        if files:
            show_study(predictor, analyse_study_once(predictor, files, ckpt_key), with_cam)
        return
    files = st.file_uploader("Upload lung CT images (JPEG, PNG, BMP, TIFF or DICOM); several at once is fine",
                             type=list(UPLOAD_TYPES), accept_multiple_files=True)
    if not files:
        st.caption("Nothing is stored: uploaded images stay in this session's memory and are gone when the page closes.")
        return
    results = analyse_all(predictor, files, with_cam, ckpt_key)
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
