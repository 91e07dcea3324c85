"""A patient's study: compressed DICOM, series grouping and ordering, zips (limits, bombs, path tricks), the
series rule and the series table of lungcnn-predict, with no patient tag in any output."""

from __future__ import annotations

import csv
import io
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from lungcnn.cli import predict as predict_cli
from lungcnn.data.aggregation import aggregate
from lungcnn.data.io import read_image
from lungcnn.data.series import ArchiveLimits, Source, group_series, open_zip, read_groups, sources_from_files
from lungcnn.data.synthetic.dicom import PATIENT, ct_series, write_ct_series
from lungcnn.errors import LungCNNInputError
from lungcnn.inference import schema
from lungcnn.models.checkpoint import load_checkpoint, save_checkpoint
from lungcnn.spec import ModelSpec, SeriesRule

PHI = [v for v in PATIENT.values()] + ["Doe", "Jane"]


def _dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _save(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# -- compressed transfer syntaxes ------------------------------------------------------------------------
def jpeg_lossless_sv1(image: np.ndarray, precision: int) -> bytes:
    """A JPEG Lossless (process 14, selection value 1) codestream: ITU T.81 annex H, one component, Pt = 0.

    pydicom has no encoder for this syntax, so the test writes one: predictor Ra (left; above for the first
    column, 2^(P-1) for the first sample), one Huffman table of 17 five-bit codes for categories 0..16.
    """
    x = image.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:], pred[1:, 0], pred[1:, 1:] = x[0, :-1], x[:-1, 0], x[1:, :-1]
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
    bits: list[str] = []
    for d in diff.tolist():
        ssss = 16 if d == -32768 else abs(d).bit_length()
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else d + (1 << ssss) - 1, f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    entropy = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        entropy.append(byte)
        if byte == 0xFF:
            entropy.append(0x00)
    h, w = image.shape
    size = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    sof = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([precision]) + size + b"\x01\x01\x11\x00"
    counts = [0] * 16
    counts[4] = 17
    dht = b"\xff\xc4" + (36).to_bytes(2, "big") + b"\x00" + bytes(counts) + bytes(range(17))
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + b"\x01\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + sof + dht + sos + bytes(entropy) + b"\xff\xd9"


@pytest.fixture(scope="module")
def ct_slice() -> bytes:
    return ct_series(1, 64, seed=3)[0]


def test_jpeg_lossless_process_14_reads_as_the_uncompressed_slice(ct_slice):
    ds = _dataset(ct_slice)
    frame = jpeg_lossless_sv1(ds.pixel_array, precision=ds.BitsStored)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    np.testing.assert_array_equal(read_image(_save(ds), name="p14.dcm"), read_image(ct_slice, name="raw.dcm"))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k-lossless"])
def test_syntaxes_pydicom_encodes_read_back_exactly(ct_slice, syntax):
    ds = _dataset(ct_slice)
    ds.compress(syntax)
    np.testing.assert_array_equal(read_image(_save(ds), name="c.dcm"), read_image(ct_slice, name="raw.dcm"))


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "JPEG2000.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm"])
def test_pydicom_compressed_test_files_read(name):
    image = read_image(get_testdata_file(name))
    assert image.ndim == 2 and image.dtype == np.float32 and 0 <= image.min() < image.max() <= 1


def test_jpeg_ls_file_matches_its_uncompressed_original():
    np.testing.assert_array_equal(read_image(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")),
                                  read_image(get_testdata_file("MR_small.dcm")))


def test_12_bit_jpeg_with_a_malformed_scan_range_is_repaired():
    # JPEG-lossy.dcm declares spectral range 0..0 in a sequential scan; libjpeg refuses it as written.
    lossy, reference = read_image(get_testdata_file("JPEG-lossy.dcm")), read_image(get_testdata_file("JPGExtended.dcm"))
    assert lossy.shape == reference.shape == (1024, 256)
    assert np.abs(lossy - reference).mean() < 0.01


# -- grouping and order ----------------------------------------------------------------------------------
def test_two_interleaved_dicom_series_are_split_and_ordered_by_position(tmp_path):
    a = write_ct_series(tmp_path / "export", 7, 32, seed=1, prefix="A")
    b = write_ct_series(tmp_path / "export", 5, 32, seed=2, prefix="B")
    shuffled = sorted((tmp_path / "export").iterdir(), key=lambda p: hash(p.name) % 97)
    series = group_series(sources_from_files(shuffled))
    assert sorted(len(s.sources) for s in series) == [5, 7]
    for s in series:
        expected = a if len(s.sources) == 7 else b
        assert [x.path for x in s.sources] == expected
        assert s.key == _dataset(expected[0].read_bytes()).SeriesInstanceUID


def test_position_along_the_normal_wins_over_instance_number(tmp_path):
    files = ct_series(4, 16, seed=5)
    folder = tmp_path / "s"
    folder.mkdir()
    for k, data in enumerate(files):
        ds = _dataset(data)
        ds.InstanceNumber = 10 - k  # numbered head to feet, positioned feet to head
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal: the normal is -x
        ds.ImagePositionPatient = [float(k), 0.0, 0.0]
        (folder / f"x{k}.dcm").write_bytes(_save(ds))
    (series,) = group_series(sources_from_files(sorted(folder.iterdir())))
    assert [Path(s.name).name for s in series.sources] == ["x3.dcm", "x2.dcm", "x1.dcm", "x0.dcm"]
    for k, data in enumerate(files):  # without positions, InstanceNumber orders them
        ds = _dataset(data)
        del ds.ImagePositionPatient
        ds.InstanceNumber = 10 - k
        (folder / f"x{k}.dcm").write_bytes(_save(ds))
    (series,) = group_series(sources_from_files(sorted(folder.iterdir())))
    assert [Path(s.name).name for s in series.sources] == ["x3.dcm", "x2.dcm", "x1.dcm", "x0.dcm"]


def test_groups_csv_and_folder_fallback(tmp_path, tiny_root):
    groups = read_groups(tiny_root / "groups.csv")
    files = sorted(tiny_root.rglob("*.png"))
    series = group_series(sources_from_files(files), groups)
    assert len(series) == 10 and all(len(s.sources) == 3 for s in series)
    for s in series:
        assert {groups[x.path.resolve()] for x in s.sources} == {s.key}
    by_folder = group_series(sources_from_files(files))
    assert sorted(s.key for s in by_folder) == sorted({str(f.parent) for f in files})
    bad = tmp_path / "bad.csv"
    bad.write_text("path,patient\na.png,1\n")
    with pytest.raises(LungCNNInputError, match="file,group"):
        read_groups(bad)


def test_names_sort_numbers_as_numbers(tmp_path):
    sources = [Source(f"case ({i}).jpg", "f", data=b"") for i in (10, 2, 1)]
    (series,) = group_series(sources)
    assert [s.name for s in series.sources] == ["case (1).jpg", "case (2).jpg", "case (10).jpg"]


# -- zips ------------------------------------------------------------------------------------------------
def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_a_zipped_series_is_read_in_memory_and_grouped():
    files = ct_series(4, 16, seed=7)
    data = _zip({f"export/{9 - k}": d for k, d in enumerate(files)} | {"__MACOSX/._0": b"x", "notes.txt": b"y"})
    sources = open_zip(data, "study.zip")
    assert len(sources) == 4 and all(s.data is not None and s.name.startswith("study.zip/export/") for s in sources)
    (series,) = group_series(sources)
    assert [s.data for s in series.sources] == files


@pytest.mark.parametrize("member, reason", [("../../etc/cron.d/x.dcm", "'..'"), ("/abs/x.dcm", "absolute"),
                                            ("C:/win/x.dcm", "absolute"), ("a\\..\\x.dcm", "backslash")])
def test_path_tricks_refuse_the_archive(member, reason):
    with pytest.raises(LungCNNInputError, match=reason):
        open_zip(_zip({"ok.dcm": b"1", member: b"2"}), "trick.zip")


def test_zip_bombs_and_member_counts_are_refused_before_inflating():
    bomb = _zip({"a.dcm": bytes(8 * 2**20)})  # 8 MiB of zeros in ~8 KiB
    assert len(bomb) < 2**16
    with pytest.raises(LungCNNInputError, match="zip bomb"):
        open_zip(bomb, "bomb.zip", ArchiveLimits(max_member_bytes=2**20))
    with pytest.raises(LungCNNInputError, match="zip bomb"):
        open_zip(_zip({f"{i}.dcm": bytes(2**19) for i in range(6)}), "many.zip", ArchiveLimits(max_total_bytes=2**21))
    with pytest.raises(LungCNNInputError, match="entries"):
        open_zip(_zip({f"{i}.png": b"" for i in range(5)}), "count.zip", ArchiveLimits(max_members=4))
    with pytest.raises(LungCNNInputError, match="not a readable zip"):
        open_zip(b"PK\x03\x04 not really", "fake.zip")


# -- the series rule -------------------------------------------------------------------------------------
def test_aggregations():
    p = np.array([0.1, 0.9, 0.5, np.nan, 0.7])
    assert aggregate("max", p) == pytest.approx(0.9)
    assert aggregate("topk_mean", p, k=2) == pytest.approx(0.8)
    assert aggregate("topk_mean", p, k=10) == pytest.approx(np.mean([0.1, 0.9, 0.5, 0.7]))
    assert aggregate("noisy_or", p) == pytest.approx(1 - 0.9 * 0.1 * 0.5 * 0.3)
    assert aggregate("mean", p) == pytest.approx(0.55)
    assert np.isnan(aggregate("max", np.array([np.nan])))


def test_series_rule_is_checked_and_round_trips_through_the_checkpoint_metadata(trained_ckpt):
    spec, _ = load_checkpoint(trained_ckpt)
    assert spec.series == SeriesRule() and spec.series_target == "malignant"
    custom = spec.replace(series=SeriesRule("max", 1, 0.8, "malignant"))
    assert ModelSpec.from_metadata(custom.to_metadata()).series == custom.series
    old = spec.to_metadata()
    del old["series"]  # a format-2 checkpoint written before series rules existed
    assert ModelSpec.from_metadata(old).series == SeriesRule()
    for bad in ({"method": "median"}, {"k": 0}, {"threshold": 1.5}):
        with pytest.raises(LungCNNInputError):
            SeriesRule(**bad)
    with pytest.raises(LungCNNInputError, match="series target"):
        spec.replace(series=SeriesRule(target="normal"))


def test_flagged_slices_are_left_out_and_a_mostly_flagged_series_gets_no_answer(trained_ckpt):
    from lungcnn.inference.predictor import OUT_OF_DOMAIN
    from lungcnn.inference.series import summarise

    spec, _ = load_checkpoint(trained_ckpt)
    spec = spec.replace(series=SeriesRule("max", 1, 0.5))
    names = [f"s{k}" for k in range(5)]
    p = [0.1, 0.99, 0.2, np.nan, 0.3]  # the 0.99 slice is a photo the guard flags: it must not make the series malignant
    some = summarise(spec, "A", names, p, [True, False, True, None, True])
    assert some.probability == pytest.approx(0.3) and some.decision == "benign" and some.most_suspicious == 4
    assert some.counts == {"n_unreadable": 1, "n_no_lungs": 0, "n_out_of_domain": 1} and 1 not in some.ranked
    most = summarise(spec, "B", names, p, [False, False, True, None, False])
    assert most.decision == OUT_OF_DOMAIN and np.isnan(most.probability) and most.ranked == [2]
    row = most.row("malignant")
    assert row["decision"] == OUT_OF_DOMAIN and row["n_out_of_domain"] == 3 and "series_probability_malignant" not in row
    assert summarise(spec, "C", names, p).counts["n_out_of_domain"] == 0  # no guard: every readable slice counts
    assert spec.replace(series=SeriesRule(min_in_domain=1.0)).series.min_in_domain == 1.0
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(LungCNNInputError, match="min_in_domain"):
            SeriesRule(min_in_domain=bad)


def test_slices_without_lungs_are_not_judged_and_do_not_make_a_series_out_of_domain(trained_ckpt):
    from lungcnn.inference.predictor import NO_LUNGS
    from lungcnn.inference.series import summarise

    spec, _ = load_checkpoint(trained_ckpt)
    spec = spec.replace(series=SeriesRule("max", 1, 0.5, min_in_domain=0.6))
    names = [f"s{k}" for k in range(6)]
    # A neck slice first, three abdominal slices last (0.999: what the reference model said of the liver).
    p = [0.98, 0.2, 0.3, 0.999, 0.97, 0.99]
    lungs = [False, True, True, False, False, False]
    series = summarise(spec, "A", names, p, [True] * 6, lungs)
    assert series.decision == "benign" and series.probability == pytest.approx(0.3) and series.most_suspicious == 2
    assert series.counts == {"n_unreadable": 0, "n_no_lungs": 4, "n_out_of_domain": 0} and series.ranked == [2, 1]
    assert series.row("malignant")["n_no_lungs"] == 4
    none = summarise(spec, "B", names, p, None, [False] * 6)
    assert none.decision == NO_LUNGS and np.isnan(none.probability) and none.ranked == [] and none.most_suspicious is None


def test_novelty_ranks_the_judged_slices_and_leaves_the_decision_to_the_probabilities(trained_ckpt):
    from lungcnn.inference.series import summarise

    spec, _ = load_checkpoint(trained_ckpt)
    spec = spec.replace(series=SeriesRule("max", 1, 0.5))
    names = [f"s{k}" for k in range(5)]
    p = [0.9, 0.2, 0.3, float("nan"), 0.95]
    novelty = [1.0, 1.3, 1.1, float("nan"), 0.9]  # the slice of highest P is the least novel
    lungs = [True, True, True, None, False]
    ranked = summarise(spec, "A", names, p, [True] * 5, lungs, novelty)
    assert ranked.ranked_by_novelty and ranked.ranked == [1, 2, 0] and ranked.most_suspicious == 1
    assert ranked.decision == "malignant" and ranked.probability == pytest.approx(0.9)  # P's, not novelty's
    assert ranked.row("malignant")["most_suspicious_slice"] == "s1"
    # A judged slice without a novelty (no normal bank, an older table): ranked by probability, as before.
    plain = summarise(spec, "A", names, p, [True] * 5, lungs, [1.0, float("nan"), 1.1, float("nan"), 0.9])
    assert not plain.ranked_by_novelty and plain.ranked == [0, 2, 1] and plain.most_suspicious == 0


# -- lungcnn-predict --series-out ------------------------------------------------------------------------
def test_predict_writes_the_series_table_without_patient_tags(trained_ckpt, tiny_root, tmp_path, capsys, caplog):
    spec, state = load_checkpoint(trained_ckpt)
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, spec.replace(series=SeriesRule("topk_mean", 2, 0.5)), state)
    study = tmp_path / "study"
    first = write_ct_series(study / "dicom", 5, 64, seed=11, prefix="A")
    write_ct_series(study / "dicom", 3, 64, seed=12, prefix="B")
    (study / "dicom" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk")
    (study / "zipped.zip").write_bytes(_zip({f"s/{k}.dcm": d for k, d in enumerate(ct_series(4, 64, seed=13))}))
    shutil.copytree(tiny_root / "benign", study / "benign")
    shutil.copy(tiny_root / "groups.csv", tmp_path / "groups.csv")  # paths relative to the CSV: benign/...
    shutil.move(study / "benign", tmp_path / "benign")
    out, series_out = tmp_path / "slices.csv", tmp_path / "series.csv"
    with caplog.at_level(logging.INFO):
        assert predict_cli.main([str(study), str(tmp_path / "benign"), "--ckpt", str(ckpt), "--out", str(out),
                                 "--series-out", str(series_out),
                                 "--groups", str(tmp_path / "groups.csv"), "--backend", "torch", "--workers", "0",
                                 "--no-progress"]) == 0
    slices = list(csv.DictReader(open(out, encoding="utf-8")))
    with open(series_out, encoding="utf-8") as f:
        header = next(csv.reader(f))
    rows = list(csv.DictReader(open(series_out, encoding="utf-8")))
    assert header == schema.series_columns("malignant")
    assert any("probability" in c for c in header)
    assert len(slices) == 5 + 3 + 1 + 4 + 12
    assert sorted(int(r["n_slices"]) for r in rows) == [1, 3, 3, 3, 3, 3, 4, 5]  # B, 4 benign patients (groups.csv)
    p = {r["file"]: float(r["probability_malignant"]) for r in slices if r["probability_malignant"]}
    for r in rows:
        if r["series"].endswith("dicom"):  # the unreadable file has no series tags: its folder is its series
            assert r["n_unreadable"] == "1" and r["decision"] == "" and r["most_suspicious_slice"] == ""
            continue
        assert r["n_unreadable"] == "0" and r["decision"] in ("benign", "malignant")
        members = [f for f in p if _series_of(f, r, first)]
        top = sorted((p[f] for f in members), reverse=True)
        if members:
            assert float(r["series_probability_malignant"]) == pytest.approx(np.mean(top[:2]))
            assert p[r["most_suspicious_slice"]] == max(top)
        assert r["decision"] == ("malignant" if float(r["series_probability_malignant"]) >= 0.5 else "benign")
    written = out.read_text() + series_out.read_text() + capsys.readouterr().out + caplog.text
    assert not [v for v in PHI if v in written]


def _series_of(file: str, row: dict, first: list[Path]) -> bool:
    """Membership for the checks above: the first DICOM series' files, or the zip's members, by name."""
    if int(row["n_slices"]) == 5:
        return file in {str(p) for p in first}
    if int(row["n_slices"]) == 4:
        return "zipped.zip/" in file
    return False


def test_a_refused_zip_ends_predict_with_its_reason(trained_ckpt, tmp_path, capsys):
    (tmp_path / "trick.zip").write_bytes(_zip({"../x.dcm": b"1"}))
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main([str(tmp_path / "trick.zip"), "--ckpt", str(trained_ckpt), "--out", str(tmp_path / "o.csv"),
                          "--no-progress"])
    assert exit_info.value.code == 2
    assert "'..'" in capsys.readouterr().err


def test_a_series_the_guard_rejects_is_out_of_domain_in_the_series_table(calibrated_ckpt, tmp_path):
    import dataclasses

    from lungcnn.inference.predictor import OUT_OF_DOMAIN

    spec, state = load_checkpoint(calibrated_ckpt)
    ckpt = tmp_path / "strict.ckpt"  # a guard that accepts nothing: every slice is unlike the training images
    save_checkpoint(ckpt, spec.replace(guard=dataclasses.replace(spec.guard, threshold=1e-9)), state)
    write_ct_series(tmp_path / "study", 4, 64, seed=5, prefix="A")
    out, series_out = tmp_path / "slices.csv", tmp_path / "series.csv"
    assert predict_cli.main([str(tmp_path / "study"), "--ckpt", str(ckpt), "--out", str(out), "--series-out",
                             str(series_out), "--backend", "torch", "--workers", "0", "--no-progress"]) == 0
    (row,) = list(csv.DictReader(open(series_out, encoding="utf-8")))
    assert row["decision"] == OUT_OF_DOMAIN and row["n_out_of_domain"] == "4" and row["series_probability_malignant"] == ""
