"""The model spec: everything a checkpoint says about its network, in one typed, frozen object.

`ModelSpec` (like timm's `PretrainedCfg`) holds what the network is (`NetworkSpec`), how an image becomes
its input (`Preprocessing`), how its logits become calibrated probabilities (`Calibration`), how those
become a decision (`DecisionRule`), the task and its classes (`lungcnn.task.Task`), and provenance (data,
test figures). Each part checks itself in `__post_init__`; `ModelSpec` checks what spans parts.

It is the only reader and writer of a checkpoint's metadata: `to_metadata()` gives plain Python types
(so `torch.load(weights_only=True)` reads it back and JSON can hold it), `from_metadata()` checks and
rebuilds it. Format 1 metadata (a flat dict, before this module existed) is converted on load.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lungcnn.data.aggregation import AGGREGATIONS
from lungcnn.data.io import LungWindow
from lungcnn.data.transforms import check_model_input, check_normalisation
from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import plain
from lungcnn.task import Task, make_task

# Which pooled backbone features the head reads (model.features, `models.backbone.create_backbone`):
# - head: the ImageNet network's own pooled features, after its last 1x1 convolution (1280 for MobileNetV2), as timm
#   gives them;
# - blocks: the last block's output (320 for MobileNetV2), before that convolution, which was trained for ImageNet's
#   classes (measured, not adopted: docs/results/sources.md, "Which backbone features").
FEATURES = ("head", "blocks")

FORMAT = "lungcnn-checkpoint/2"
CALIBRATION_METHODS = ("none", "temperature", "isotonic")
TTA_MODES = ("none", "flip")


def _check_bank(part: Any, what: str, rows: str) -> None:
    """A kNN bank's sizes (`k`, `feature_dim`, `bank_size`): integers >= 1, k within the bank."""
    for name in ("k", "feature_dim", "bank_size"):
        value = getattr(part, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LungCNNInputError(f"{what} {name} must be an integer >= 1, got {value!r}")
    if part.k > part.bank_size:
        raise LungCNNInputError(f"{what} k={part.k} exceeds its bank of {part.bank_size} {rows}")


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LungCNNInputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise LungCNNInputError(f"{what} must be finite, got {value!r}")
    return number


def _floats(values: Any, what: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray):
        raise LungCNNInputError(f"{what} must be a list of numbers, got {values!r}")
    return tuple(_finite(v, what) for v in values)


@dataclass(frozen=True)
class NetworkSpec:
    """backbone -> global average pooling -> dropout -> Linear(F, hidden) -> ReLU -> dropout -> Linear(hidden, outputs).

    Args:
        backbone: a timm model name (e.g. `mobilenetv2_100`).
        hidden: width of the head's hidden layer (>= 1), or 0 for a linear head (dropout -> Linear(F, outputs)).
        dropout: dropout probability in [0, 1).
        features: which pooled backbone features the head reads (`FEATURES`): `head`, the ImageNet
            network's own (after its last 1x1 convolution), or `blocks`, the last block's (before it). `head` where
            the setting is missing (older checkpoints).
        standardize: the head standardises the pooled features first, with the training split's mean and
            standard deviation (in the checkpoint's state). False where the setting is missing.
    """

    backbone: str
    hidden: int = 128
    dropout: float = 0.2
    features: str = "head"
    standardize: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise LungCNNInputError(f"network backbone must be a timm model name, got {self.backbone!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 0:
            raise LungCNNInputError(f"head hidden width must be an integer >= 0 (0: linear), got {self.hidden!r}")
        if not 0.0 <= _finite(self.dropout, "head dropout") < 1.0:
            raise LungCNNInputError(f"head dropout must be in [0, 1), got {self.dropout}")
        if self.features not in FEATURES:
            raise LungCNNInputError(f"network features must be one of {FEATURES}, got {self.features!r}")
        if not isinstance(self.standardize, bool):
            raise LungCNNInputError(f"network standardize must be true or false, got {self.standardize!r}")


@dataclass(frozen=True)
class Preprocessing:
    """File -> network input: read (DICOM through `window`), pad to a square with 0, optional lung crop,
    resize to `image_size`, repeat to 3 channels, normalise (value / 255 - mean) / std per channel.

    Args:
        image_size: side of the square input in pixels (checked by `transforms.check_model_input`).
        mean, std: per-channel normalisation of values in [0, 1] (3 each, std > 0).
        window: the CT window (HU) that renders DICOM pixel data to [0, 1].
        crop: `none` or `lungs` (crop to the lung fields before resizing).
        lung_check: find the lung fields in every image (`data.lungcrop`) and judge none without them ("no lungs in
            view": neck, abdomen, an inverted image). Off where the setting is missing (older checkpoints); training
            records `data.lung_check` (on in the real-data experiments; docs/lesion.md has its flag rates).
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    window: LungWindow = field(default_factory=LungWindow)
    crop: str = "none"
    lung_check: bool = False

    def __post_init__(self) -> None:
        check_model_input(self.image_size, self.crop)
        if not isinstance(self.lung_check, bool):
            raise LungCNNInputError(f"data.lung_check must be true or false, got {self.lung_check!r}")
        mean, std = _floats(self.mean, "data.mean"), _floats(self.std, "data.std")
        check_normalisation(mean, std)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if isinstance(self.window, Mapping):
            object.__setattr__(self, "window", LungWindow(**_only(self.window, LungWindow)))


@dataclass(frozen=True)
class Calibration:
    """Logits -> calibrated probabilities, fitted by `lungcnn.calibrate` on validation outputs.

    `temperature`: task.probabilities(logits, logit_shift, temperature) (the prior shift undoes class-balanced
    training; T fixes confidence). `isotonic` (binary): the uncalibrated P(positive) mapped through the
    monotone breakpoints (isotonic_x, isotonic_y). `none`: the network's own probabilities.

    Args:
        method: `none`, `temperature` or `isotonic`.
        temperature: T > 0 (1 unless method is temperature).
        logit_shift: prior correction, one number (binary) or one per class.
        isotonic_x, isotonic_y: the isotonic map's breakpoints (x increasing, y non-decreasing, in [0, 1]).
        tta: test-time augmentation the calibration was fitted with and every consumer serves: `none` or `flip`.
        details: how it was fitted (plain types: `fitted_on`, NLL before/after, target sensitivity, messages).
    """

    method: str = "none"
    temperature: float = 1.0
    logit_shift: float | tuple[float, ...] = 0.0
    isotonic_x: tuple[float, ...] = ()
    isotonic_y: tuple[float, ...] = ()
    tta: str = "none"
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise LungCNNInputError(f"calibration method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        t = _finite(self.temperature, "temperature")
        if t <= 0:
            raise LungCNNInputError(f"temperature must be > 0, got {self.temperature}")
        object.__setattr__(self, "temperature", t)
        shift = self.logit_shift
        shift = _floats(shift, "logit shift") if isinstance(shift, Sequence | np.ndarray) else _finite(shift, "logit shift")
        object.__setattr__(self, "logit_shift", shift)
        x, y = _floats(self.isotonic_x, "isotonic x"), _floats(self.isotonic_y, "isotonic y")
        object.__setattr__(self, "isotonic_x", x)
        object.__setattr__(self, "isotonic_y", y)
        if self.method == "isotonic":
            if not x or len(x) != len(y) or np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or min(y) < 0 or max(y) > 1:
                raise LungCNNInputError("isotonic calibration needs breakpoints with increasing x and non-decreasing y in [0, 1]")
        if self.tta not in TTA_MODES:
            raise LungCNNInputError(f"test-time augmentation must be one of {TTA_MODES}, got {self.tta!r}")
        object.__setattr__(self, "details", dict(self.details or {}))

    @property
    def graph_shift(self) -> float | tuple[float, ...]:
        """The prior shift a graph folds in: temperature scaling's, else 0 (isotonic runs on the host)."""
        return self.logit_shift if self.method == "temperature" else 0.0

    @property
    def graph_temperature(self) -> float:
        return self.temperature if self.method == "temperature" else 1.0

    def probabilities(self, task: Task, logits: Any) -> np.ndarray:
        """Calibrated probabilities: the task's rule with this calibration's shift and T, then the isotonic map."""
        probs = task.probabilities(logits, self.graph_shift, self.graph_temperature)
        if self.method == "isotonic":
            probs = apply_isotonic({"x": self.isotonic_x, "y": self.isotonic_y}, probs)
        return probs


@dataclass(frozen=True)
class DecisionRule:
    """Calibrated probabilities -> a class: binary P(positive) >= threshold; K classes argmax P(k) * w_k, or
    cancer first: `priority` whenever P(priority) >= threshold, else the best of the other classes by P(k) * w_k.

    Args:
        threshold: operating threshold in [0, 1] on P(positive) (binary) or P(priority) (K classes), chosen on
            validation for a target sensitivity.
        weights: K-class decision weights (positive), or None for the most probable class.
        priority: K classes: the class decided first by `threshold` (malignant), or None.
    """

    threshold: float = 0.5
    weights: tuple[float, ...] | None = None
    priority: str | None = None

    def __post_init__(self) -> None:
        t = _finite(self.threshold, "decision threshold")
        if not 0.0 <= t <= 1.0:
            raise LungCNNInputError(f"decision threshold must be in [0, 1], got {self.threshold}")
        object.__setattr__(self, "threshold", t)
        if self.weights is not None:
            w = _floats(self.weights, "decision weights")
            if not w or min(w) <= 0:
                raise LungCNNInputError(f"decision weights must be positive numbers, got {list(w)}")
            object.__setattr__(self, "weights", w)

    @property
    def weighted(self) -> bool:
        """True when the weights can change a decision (argmax(P * w) is not simply argmax(P))."""
        return self.weights is not None and len(set(self.weights)) > 1


GUARD_METHODS = ("knn",)


@dataclass(frozen=True)
class DomainGuard:
    """When not to answer: an image whose domain score exceeds `threshold` is out of the model's domain.

    The score (`lungcnn.models.guard.KnnDistance`) is the distance of the image's L2-normalised pooled backbone
    features to the k-th nearest of `bank_size` training images' (the bank is in the checkpoint's state).
    The threshold is chosen on images of series the model never saw (the grouped validation split: new
    patients), never on training slices, whose neighbours in the bank are near copies of themselves.

    Args:
        method: `knn`.
        k: the neighbour whose distance is the score (>= 1, <= bank_size).
        threshold: the largest score still in the domain (> 0).
        feature_dim: width of the pooled features (the bank's second axis).
        bank_size: how many training images the bank holds.
        fitted_on: what the bank and the threshold came from, in words (shown on the model card).
        details: how the threshold was chosen (plain types: quantile, margin, validation scores' summary).
    """

    method: str = "knn"
    k: int = 1
    threshold: float = 1.0
    feature_dim: int = 1
    bank_size: int = 1
    fitted_on: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in GUARD_METHODS:
            raise LungCNNInputError(f"domain guard method must be one of {GUARD_METHODS}, got {self.method!r}")
        _check_bank(self, "domain guard", "images")
        t = _finite(self.threshold, "domain guard threshold")
        if t <= 0:
            raise LungCNNInputError(f"domain guard threshold must be > 0, got {self.threshold}")
        object.__setattr__(self, "threshold", t)
        object.__setattr__(self, "fitted_on", str(self.fitted_on))
        object.__setattr__(self, "details", dict(self.details or {}))

    def in_domain(self, scores: Any) -> np.ndarray:
        """Boolean per score: True where the image is like the training images."""
        return np.asarray(scores, np.float64) <= self.threshold


@dataclass(frozen=True)
class Novelty:
    """How a series' slices are ranked when the model has a normal bank: by how unlike normal chest CT each slice is.

    The score (`lungcnn.models.guard.KnnDistance` with standardisation) is the distance of the slice's pooled backbone
    features, standardised and L2-normalised, to the k-th nearest of `bank_size` normal training slices' (the bank is
    in the checkpoint's state, `novelty.*`). It ranks slices within a series (all from one scanner and export); it
    decides nothing: a slice of a source never trained on is far from every normal slice (docs/lesion.md).

    Args:
        k: the neighbour whose distance is the score (>= 1, <= bank_size).
        feature_dim: width of the pooled features.
        bank_size: how many normal training slices the bank holds.
        fitted_on: what the bank came from, in words (shown on the model card).
    """

    k: int = 1
    feature_dim: int = 1
    bank_size: int = 1
    fitted_on: str = ""

    def __post_init__(self) -> None:
        _check_bank(self, "novelty", "slices")
        object.__setattr__(self, "fitted_on", str(self.fitted_on))


@dataclass(frozen=True)
class SeriesRule:
    """A series' slice outputs -> one series probability and decision (`lungcnn.data.aggregation`).

    The calibrated P(target) of the readable slices the domain guard accepts is aggregated by `method`; the series
    is reported as `target` when that reaches `threshold`. A series whose readable slices are mostly out of the
    model's domain (fewer than `min_in_domain` of them accepted: another modality, scanner or body part) gets no
    probability and the decision "out of domain": a few accepted slices of such a series are not a basis for an answer.

    Args:
        method: one of `lungcnn.data.aggregation.AGGREGATIONS` (max, topk_mean, noisy_or, mean).
        k: slices averaged by `topk_mean` (>= 1; fewer when the series has fewer readable slices).
        threshold: series threshold in [0, 1], or None for the slice decision threshold (0.5 without one).
        target: the class whose probability is aggregated, or None for the last class (the binary positive).
        min_in_domain: the least fraction of readable slices the guard must accept for a series answer, in (0, 1].
    """

    method: str = "topk_mean"
    k: int = 3
    threshold: float | None = None
    target: str | None = None
    min_in_domain: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in AGGREGATIONS:
            raise LungCNNInputError(f"series aggregation must be one of {sorted(AGGREGATIONS)}, got {self.method!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise LungCNNInputError(f"series top-k must be an integer >= 1, got {self.k!r}")
        if self.threshold is not None:
            t = _finite(self.threshold, "series threshold")
            if not 0.0 <= t <= 1.0:
                raise LungCNNInputError(f"series threshold must be in [0, 1], got {self.threshold}")
            object.__setattr__(self, "threshold", t)
        if self.target is not None and (not isinstance(self.target, str) or not self.target):
            raise LungCNNInputError(f"series target must be a class name, got {self.target!r}")
        fraction = _finite(self.min_in_domain, "series min_in_domain")
        if not 0.0 < fraction <= 1.0:
            raise LungCNNInputError(f"series min_in_domain must be in (0, 1], got {self.min_in_domain}")
        object.__setattr__(self, "min_in_domain", fraction)

    def describe(self) -> str:
        """The rule in words for people ("mean of the 3 highest slice probabilities"): not "most suspicious", which is
        the slice order shown (novelty, where the model has a normal bank)."""
        return {"max": "the highest slice probability", "topk_mean": f"mean of the {self.k} highest slice probabilities",
                "noisy_or": "noisy-OR over all slices", "mean": "mean over all slices"}[self.method]


@dataclass(frozen=True)
class ModelSpec:
    """A trained model's full description; see the module docstring.

    Args:
        task: the task bound to its class names (`lungcnn.task.make_task`).
        network, preprocessing, calibration, decision: the parts above.
        guard: the applicability-domain guard (`DomainGuard`), or None (no guard fitted: every image answered).
        novelty: the normal bank that ranks a series' slices (`Novelty`), or None (ranked by P(target)).
        data: where the training data came from (plain types: `note`, `train_class_counts`, `imbalance`, ...).
        metrics: test figures as text for the model card; metric_values: the same figures as numbers.
        created: ISO timestamp of training.
        series: how slice outputs make a series result (older checkpoints get the default rule).
    """

    task: Task
    network: NetworkSpec
    preprocessing: Preprocessing
    calibration: Calibration = field(default_factory=Calibration)
    decision: DecisionRule = field(default_factory=DecisionRule)
    guard: DomainGuard | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, str] = field(default_factory=dict)
    metric_values: Mapping[str, float] = field(default_factory=dict)
    created: str = ""
    series: SeriesRule = field(default_factory=SeriesRule)
    novelty: Novelty | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task, Task):
            raise TypeError(f"ModelSpec.task must be a lungcnn.task.Task, got {type(self.task).__name__}")
        k = self.task.num_classes
        shift = self.calibration.logit_shift
        if isinstance(shift, tuple) and len(shift) != k:
            raise LungCNNInputError(f"the logit shift has {len(shift)} values for {k} classes")
        if self.calibration.method == "isotonic" and self.task.outputs != 1:
            raise LungCNNInputError("isotonic calibration is for one-output (binary) models; use temperature scaling")
        if self.decision.weights is not None and (self.task.outputs == 1 or len(self.decision.weights) != k):
            raise LungCNNInputError(f"decision weights {list(self.decision.weights)} do not fit {k} classes of a "
                                    f"{self.task.name} model")
        if self.decision.priority is not None and (self.task.outputs == 1 or self.decision.priority not in self.class_names):
            raise LungCNNInputError(f"decision priority {self.decision.priority!r} is not one of the classes "
                                    f"{list(self.class_names)} of a {self.task.name} model")
        if self.series.target is not None and self.series.target not in self.task.class_names:
            raise LungCNNInputError(f"series target {self.series.target!r} is not one of the classes {list(self.class_names)}")
        if self.guard is not None and not isinstance(self.guard, DomainGuard):
            raise TypeError(f"ModelSpec.guard must be a DomainGuard or None, got {type(self.guard).__name__}")
        if self.novelty is not None and not isinstance(self.novelty, Novelty):
            raise TypeError(f"ModelSpec.novelty must be a Novelty or None, got {type(self.novelty).__name__}")
        object.__setattr__(self, "data", dict(self.data or {}))
        object.__setattr__(self, "metrics", {str(a): str(b) for a, b in (self.metrics or {}).items()})
        object.__setattr__(self, "metric_values", {str(a): float(b) for a, b in (self.metric_values or {}).items()})

    # -- convenience ----------------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.task.class_names

    @property
    def data_note(self) -> str:
        return str(self.data.get("note") or "")

    @property
    def is_calibrated(self) -> bool:
        return self.calibration.method != "none"

    @property
    def series_target(self) -> str:
        """The class a series result is about (the series rule's target, else the last class)."""
        return self.series.target or self.class_names[-1]

    @property
    def series_threshold(self) -> float:
        if self.series.threshold is not None:
            return self.series.threshold
        return self.decision.threshold if self.task.thresholded else 0.5

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def probabilities(self, logits: Any, calibrated: bool = True) -> np.ndarray:
        """Logits -> probabilities as the task defines them, calibrated by this spec unless `calibrated=False`."""
        if calibrated:
            return self.calibration.probabilities(self.task, logits)
        return self.task.probabilities(logits)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities -> class indices under this spec's decision rule."""
        return self.task.decide(probs, self.decision)

    # -- reading and writing ----------------------------------------------------------------------------------
    @classmethod
    def for_training(cls, task: str, class_names: Sequence[str], backbone: str, hidden: int, dropout: float,
                     preprocessing: Mapping[str, Any], data: Mapping[str, Any] | None = None,
                     features: str = "head", standardize: bool = False) -> ModelSpec:
        """A freshly trained model: no calibration, threshold 0.5, until `lungcnn.calibrate` runs."""
        pre = {k: v for k, v in preprocessing.items() if k in _fields(Preprocessing)}
        network = NetworkSpec(backbone, int(hidden), float(dropout), str(features), bool(standardize))
        return cls(make_task(task, class_names), network, Preprocessing(**pre),
                   data=dict(data or {}), created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def to_metadata(self) -> dict[str, Any]:
        """Plain Python types only (str, int, float, bool, None, list, dict)."""
        return plain({
            "format": FORMAT,
            "task": self.task.name,
            "class_names": list(self.class_names),
            "network": dataclasses.asdict(self.network),
            "preprocessing": dataclasses.asdict(self.preprocessing),
            "calibration": dataclasses.asdict(self.calibration),
            "decision": dataclasses.asdict(self.decision),
            "guard": None if self.guard is None else dataclasses.asdict(self.guard),
            "data": self.data,
            "metrics": self.metrics,
            "metric_values": self.metric_values,
            "created": self.created,
            "series": dataclasses.asdict(self.series),
            "novelty": None if self.novelty is None else dataclasses.asdict(self.novelty),
        })

    @classmethod
    def from_metadata(cls, meta: Any, source: str = "checkpoint") -> ModelSpec:
        """Check and rebuild a spec from `to_metadata()`'s output (or format 1's, converted)."""
        if not isinstance(meta, Mapping):
            raise LungCNNInputError(f"{source}: its metadata is not a mapping; not a lungcnn model")
        meta = _LEGACY.get(meta.get("format"), lambda m: m)(meta)
        if meta.get("format") != FORMAT:
            raise LungCNNInputError(f"{source}: unknown lungcnn metadata format {meta.get('format')!r} (expected {FORMAT}); "
                                    "retrain it, or load it with the lungcnn version that wrote it and re-save")
        try:
            return cls(
                task=make_task(meta["task"], meta["class_names"]),
                network=NetworkSpec(**_only(meta["network"], NetworkSpec)),
                preprocessing=Preprocessing(**_only(meta["preprocessing"], Preprocessing)),
                calibration=Calibration(**_only(meta.get("calibration") or {}, Calibration)),
                decision=DecisionRule(**_only(meta.get("decision") or {}, DecisionRule)),
                guard=None if meta.get("guard") is None else DomainGuard(**_only(meta["guard"], DomainGuard)),
                data=meta.get("data") or {},
                metrics=meta.get("metrics") or {},
                metric_values=meta.get("metric_values") or {},
                created=str(meta.get("created") or ""),
                series=SeriesRule(**_only(meta.get("series") or {}, SeriesRule)),
                novelty=None if meta.get("novelty") is None else Novelty(**_only(meta["novelty"], Novelty)),
            )
        except LungCNNInputError as e:
            raise LungCNNInputError(f"{source}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise LungCNNInputError(f"{source}: incomplete or malformed lungcnn metadata ({type(e).__name__}: {e}); "
                                    "refusing to guess") from None


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _only(values: Any, cls: type) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise TypeError(f"{cls.__name__} must be a mapping, got {type(values).__name__}")
    unknown = set(values) - _fields(cls)
    if unknown:
        raise KeyError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return dict(values)


def _from_v1(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Format 1 (flat: backbone, head, temperature, threshold, tta, decision_weights at the top) -> format 2."""
    try:
        calibration = dict(meta.get("calibration") or {"method": "none"})
        method = calibration.pop("method", "none")
        isotonic = calibration.pop("isotonic", None) or {}
        shift = calibration.pop("logit_shift", 0.0)
        pre = {k: v for k, v in dict(meta["preprocessing"]).items() if k in _fields(Preprocessing)}
        data = dict(meta.get("data") or {})
        data.setdefault("note", meta.get("data_note", ""))
        return {
            "format": FORMAT, "task": meta["task"], "class_names": list(meta["class_names"]),
            "network": {"backbone": meta["backbone"], **dict(meta["head"])},
            "preprocessing": pre,
            "calibration": {"method": method, "temperature": meta.get("temperature", 1.0) if method == "temperature" else 1.0,
                            "logit_shift": shift if method == "temperature" else 0.0,
                            "isotonic_x": isotonic.get("x", ()), "isotonic_y": isotonic.get("y", ()),
                            "tta": meta.get("tta", "none"), "details": calibration},
            "decision": {"threshold": meta.get("threshold", 0.5), "weights": meta.get("decision_weights")},
            "data": data, "metrics": meta.get("metrics") or {}, "metric_values": meta.get("metric_values") or {},
            "created": meta.get("created", ""),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise LungCNNInputError(f"format 1 lungcnn metadata lacks {e}; retrain the model") from None


_LEGACY = {"lungcnn-checkpoint/1": _from_v1}


# Applying a fitted isotonic map belongs to the spec that stores it; fitting one is `lungcnn.calibration.isotonic`.
def apply_isotonic(params: Mapping[str, Any], probs: Any) -> np.ndarray:
    """Map probabilities through the stored breakpoints (linear between them, clipped outside), which is
    what IsotonicRegression.predict does; the output is non-decreasing in the input."""
    reject_multiclass(probs)
    try:
        x = np.asarray(params["x"], dtype=np.float64)
        y = np.asarray(params["y"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise LungCNNInputError(f"isotonic params must be a dict with float lists 'x' and 'y': {e}") from e
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise LungCNNInputError(f"isotonic params 'x' and 'y' must be non-empty lists of equal length, "
                                f"got {x.shape} and {y.shape}")
    if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or not np.all(np.isfinite(np.r_[x, y])):
        raise LungCNNInputError(
            "isotonic params are not a monotone map (x must increase, y must not decrease)"
        )
    p = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(p)) or (p.size and (p.min() < 0.0 or p.max() > 1.0)):
        raise LungCNNInputError("probabilities must be finite and in [0, 1] (did you pass logits?)")
    return np.clip(np.interp(p, x, y), 0.0, 1.0)


def reject_multiclass(probs: Any) -> None:
    shape = np.shape(probs)
    if len(shape) == 2:
        raise LungCNNInputError(
            f"isotonic calibration is binary only: got K-class probabilities of shape {shape}; "
            "use temperature scaling for K classes, or pass the (N,) probability of the positive class"
        )
