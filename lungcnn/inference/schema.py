"""The prediction table: one schema for every per-image CSV lungcnn writes or reads.

`lungcnn.evaluate` (predictions.csv, with `label`), `lungcnn-predict` and the page's download write it; the
cross-validation code reads it. Every column name is spelled here and nowhere else, and the same column
means the same thing in every table:

| column | meaning |
|---|---|
| `file` | the image (a path, or the uploaded file's name) |
| `label` | the true class name (evaluation only) |
| `source` | the data source the image came from (`data.sources`; evaluation of several sources only) |
| `decision` | the class the decision rule reports; `out of domain` when the guard flags the image; empty if unread |
| `in_domain` | `true`: the image looks like the training images (the domain guard); `false`: flagged; empty: no guard |
| `lungs_in_view` | `true`: the lung check found both lungs; `false`: none in view, decision `no lungs in view`; empty: no check |
| `domain_score` | the guard's score (kNN distance of pooled features to the training images'; > threshold = flagged) |
| `novelty` | how unlike normal training slices the image is (`spec.Novelty`; empty without a normal bank): ranks a series |
| `probability_<class>` | calibrated probability of each class (the checkpoint's calibration) |
| `uncalibrated_probability_<class>` | the network's own probability of each class |
| `logit` / `logit_<class>` | the raw output: one logit (binary) or one per class |
| `error` | why the file could not be read (empty otherwise) |

Files that could not be read keep their row, with only `file` and `error` filled. A flagged image (out of domain,
or no lungs in view) keeps its probabilities in the full table (for research); the page's table (`shown_only`)
leaves them blank.

The series table (`lungcnn-predict --series-out`, the page's series result), one row per series:

| column | meaning |
|---|---|
| `series` | the SeriesInstanceUID, the group name (`--groups`) or the folder / zip |
| `n_slices` | images in the series, readable or not |
| `series_probability_<class>` | the checkpoint's series rule over the slices' calibrated P(class) |
| `decision` | `<class>` at or above the series threshold, else the other class (binary) or `not <class>` |
| `most_suspicious_slice` | the judged slice ranked first: the highest novelty with a normal bank, else the highest P(class) |
| `n_unreadable` | slices that could not be read |
| `n_no_lungs` | readable slices without lungs in view (neck, abdomen, inverted): not judged, left out of the probability |
| `n_out_of_domain` | slices with lungs in view the domain guard flagged, left out of the series probability (see below) |

When fewer than the series rule's `min_in_domain` of a series' readable slices with lungs in view are in the model's
domain, its `decision` is `out of domain`; when no readable slice has lungs in view, `no lungs in view`: either way it
has no probability or most suspicious slice.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import atomic_open

if TYPE_CHECKING:  # pandas only to read tables back: writing rows (lungcnn-predict) needs the csv module alone
    import pandas as pd

    from lungcnn.inference.predictor import Prediction
    from lungcnn.task import Task

FILE, LABEL, SOURCE, DECISION, ERROR = "file", "label", "source", "decision", "error"
IN_DOMAIN, DOMAIN_SCORE, LUNGS_IN_VIEW, NOVELTY = "in_domain", "domain_score", "lungs_in_view", "novelty"
PROBABILITY, UNCALIBRATED, LOGIT = "probability_", "uncalibrated_probability_", "logit"
# What the page shows (and its download carries).
SHOWN = ("file", "decision", "in_domain", "lungs_in_view", "probability", "error")


SERIES, N_SLICES, MOST_SUSPICIOUS = "series", "n_slices", "most_suspicious_slice"
N_UNREADABLE, N_OUT_OF_DOMAIN, N_NO_LUNGS = "n_unreadable", "n_out_of_domain", "n_no_lungs"
SERIES_PROBABILITY = "series_probability_"
SERIES_COUNTS = (N_UNREADABLE, N_NO_LUNGS, N_OUT_OF_DOMAIN)


def probability_column(class_name: str, calibrated: bool = True) -> str:
    return (PROBABILITY if calibrated else UNCALIBRATED) + class_name


def logit_columns(task: Task) -> list[str]:
    return [LOGIT] if task.outputs == 1 else [f"{LOGIT}_{c}" for c in task.class_names]


def columns(task: Task, *, labelled: bool = False, shown_only: bool = False, sourced: bool = False) -> list[str]:
    """The table's header for `task`; `labelled` adds `label`, `sourced` adds `source`; `shown_only` keeps what
    the page shows."""
    names = task.class_names
    if shown_only:
        return [FILE, DECISION, IN_DOMAIN, LUNGS_IN_VIEW, *[probability_column(c) for c in names], ERROR]
    return [FILE, *([LABEL] if labelled else []), *([SOURCE] if sourced else []), DECISION, IN_DOMAIN, LUNGS_IN_VIEW,
            DOMAIN_SCORE, NOVELTY,
            *[probability_column(c) for c in names],
            *[probability_column(c, calibrated=False) for c in names], *logit_columns(task), ERROR]


def row(task: Task, prediction: Prediction, label: str | None = None, *, shown_only: bool = False,
        source: str | None = None) -> dict[str, Any]:
    """One prediction as {column: value}; an unreadable file's row has `file` and `error` only, and a flagged
    image's `shown_only` row no probabilities."""
    out: dict[str, Any] = {FILE: prediction.file, ERROR: prediction.error or ""}
    if label is not None:
        out[LABEL] = label
    if source is not None:
        out[SOURCE] = source
    if not prediction.ok:
        return out
    out[DECISION] = prediction.decision
    out[IN_DOMAIN] = "" if prediction.in_domain is None else str(bool(prediction.in_domain)).lower()
    out[LUNGS_IN_VIEW] = "" if prediction.lungs_in_view is None else str(bool(prediction.lungs_in_view)).lower()
    if not shown_only and prediction.in_domain is not None:
        out[DOMAIN_SCORE] = prediction.domain_score
    if not shown_only and prediction.novelty == prediction.novelty:  # NaN: no normal bank
        out[NOVELTY] = prediction.novelty
    for c in task.class_names:
        if shown_only and not prediction.answered:
            break
        out[probability_column(c)] = prediction.probabilities[c]
        if not shown_only:
            out[probability_column(c, calibrated=False)] = prediction.uncalibrated[c]
    if not shown_only:
        out.update(zip(logit_columns(task), prediction.logits))
    return out


class Writer:
    """Rows streamed into a CSV that appears atomically when the `with` block ends cleanly (a failed or
    interrupted run leaves the previous file untouched). `counts` tallies classified and unreadable files."""

    def __init__(self, path: str | Path, task: Task, labelled: bool = False, sourced: bool = False) -> None:
        self.path, self.task, self.labelled, self.sourced = path, task, labelled, sourced
        self.counts = {"classified": 0, "unreadable": 0}

    def __enter__(self) -> Writer:
        self._file = atomic_open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file.__enter__(), columns(self.task, labelled=self.labelled, sourced=self.sourced),
                                      restval="")
        self._writer.writeheader()
        return self

    def write(self, prediction: Prediction, label: str | None = None, source: str | None = None) -> None:
        self._writer.writerow(row(self.task, prediction, label, source=source))
        self.counts["classified" if prediction.ok else "unreadable"] += 1

    def __exit__(self, *exc: Any) -> None:
        self._file.__exit__(*exc)


def write_csv(path: str | Path, task: Task, predictions: Iterable[Prediction],
              labels: Sequence[str] | None = None, sources: Sequence[str] | None = None) -> dict[str, int]:
    """Write the whole table atomically; return counts of classified and unreadable files."""
    with Writer(path, task, labelled=labels is not None, sourced=sources is not None) as writer:
        for i, p in enumerate(predictions):
            writer.write(p, None if labels is None else labels[i], None if sources is None else sources[i])
    return writer.counts


class Table:
    """A prediction table read back: its class names and columns as arrays (cross-validation, re-scoring).

    Args:
        frame: the CSV as a DataFrame; it must have `file`, `label` and both probability columns of every class.
    """

    def __init__(self, frame: pd.DataFrame, source: str = "predictions") -> None:
        self.class_names = [c.removeprefix(PROBABILITY) for c in frame.columns if c.startswith(PROBABILITY)]
        needed = [FILE, LABEL, *[probability_column(c, calibrated=False) for c in self.class_names]]
        missing = [c for c in needed if c not in frame.columns]
        if len(self.class_names) < 2 or missing:
            raise LungCNNInputError(f"{source}: not a lungcnn prediction table with labels (expected {FILE}, {LABEL}, "
                                    f"{PROBABILITY}<class> and {UNCALIBRATED}<class> columns; missing {missing})")
        self.frame = frame

    @property
    def readable(self):
        """Boolean mask of the rows whose file was read (no `error`)."""
        if ERROR not in self.frame:
            import pandas as pd

            return pd.Series(True, index=self.frame.index)
        return self.frame[ERROR].fillna("").astype(str) == ""

    @classmethod
    def read(cls, path: str | Path) -> Table:
        import pandas as pd

        return cls(pd.read_csv(path, dtype={FILE: str, LABEL: str, SOURCE: str, DECISION: str, IN_DOMAIN: str,
                                           LUNGS_IN_VIEW: str, ERROR: str}), str(path))

    @property
    def in_domain(self):
        """Boolean mask of the rows judged: the domain guard accepted them and the lung check found lungs (all True
        for a table without either's verdicts). Slices without lungs in view are counted like out-of-domain ones."""
        import pandas as pd

        judged = pd.Series(True, index=self.frame.index)
        for column in (IN_DOMAIN, LUNGS_IN_VIEW):
            if column in self.frame:
                judged &= self.frame[column].fillna("").astype(str) != "false"
        return judged

    def probabilities(self, calibrated: bool = True):
        """(N, K) per-class probabilities."""
        return self.frame[[probability_column(c, calibrated) for c in self.class_names]].to_numpy("float64")

    def label_indices(self):
        return self._indices(LABEL)

    def decision_indices(self):
        """The checkpoint's decisions as class indices (rows that were read)."""
        return self._indices(DECISION)

    def _indices(self, column: str):
        index = {n: i for i, n in enumerate(self.class_names)}
        unknown = sorted(set(self.frame[column].astype(str)) - set(index))
        if unknown:
            raise LungCNNInputError(f"{column}s {unknown} are not among the predicted classes {self.class_names}")
        return self.frame[column].map(index).to_numpy("int64")


# -- the series table -------------------------------------------------------------------------------------
def series_probability_column(target: str) -> str:
    return SERIES_PROBABILITY + target


def series_columns(target: str) -> list[str]:
    return [SERIES, N_SLICES, series_probability_column(target), DECISION, MOST_SUSPICIOUS, *SERIES_COUNTS]


def series_row(target: str, series: str, n_slices: int, probability: float, decision: str | None,
               most_suspicious: str | None, counts: dict[str, int]) -> dict[str, Any]:
    """One series as {column: value}; a series with no readable slice has no probability, decision or slice, one
    out of the model's domain only its decision."""
    out: dict[str, Any] = {SERIES: series, N_SLICES: n_slices, **{c: counts.get(c, 0) for c in SERIES_COUNTS}}
    if decision is not None:
        out[DECISION] = decision
    if most_suspicious is not None:
        out.update({series_probability_column(target): probability, MOST_SUSPICIOUS: most_suspicious})
    return out


def write_series_csv(path: str | Path, target: str, rows: Iterable[dict[str, Any]]) -> int:
    """Write the series table atomically; return the number of series."""
    n = 0
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, series_columns(target), restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
            n += 1
    return n


def read_slice_probabilities(path: str | Path, target: str) -> dict[str, tuple[float, bool | None, bool | None, float]]:
    """{file: (calibrated P(target), in domain, lungs in view, novelty)} from a prediction table; NaN for a file that
    could not be read, None where the checkpoint has no guard or the lung check is off (or the table predates it),
    novelty NaN without a normal bank."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={FILE: str, ERROR: str, IN_DOMAIN: str, LUNGS_IN_VIEW: str}, keep_default_na=False,
                        na_values={probability_column(target): [""], NOVELTY: [""]})
    verdict = {"true": True, "false": False}
    domain = [verdict.get(v) for v in frame[IN_DOMAIN]]
    lungs = [verdict.get(v) for v in frame[LUNGS_IN_VIEW]] if LUNGS_IN_VIEW in frame else [None] * len(frame)
    novelty = frame[NOVELTY].astype("float64") if NOVELTY in frame else [float("nan")] * len(frame)
    return dict(zip(frame[FILE], zip(frame[probability_column(target)].astype("float64"), domain, lungs, novelty)))
