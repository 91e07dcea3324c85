"""Is a series ranking driven by the lesion? Remove each tumour from its slice and rank again.

    python scripts/lesion_counterfactual.py --ckpt CKPT --boxes ../shared/data/lung-pet-ct-dx-dev/boxes.csv \
        --out counterfactual.json [--grow 1.0 1.5]

Every tumour slice of the annotated series gets its box (grown by `--grow` around its centre, on the model's grid)
emptied (`--fill lung`: its part inside the lung fields' hulls set to aerated lung; `--fill inpaint`: the whole box
inpainted from its surroundings, which leaves soft tissue where a tumour abuts the chest wall); tumour-free slices
stay as they are. For P(target)
and, where the checkpoint has a normal bank, the novelty, it reports the within-series figures of
`lungcnn.evaluation.annotated.figures` (AUC of tumour vs tumour-free slices, first tumour slice's rank; slices the
checkpoint does not judge ranked last) with the slices as they are and with the tumours removed, and the mean change
of each score on the tumour slices. A ranking driven by the lesion falls when the lesion is gone; one that stays put
ranks the tumour slices for other reasons (their level in the chest, the patient's anatomy).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd


def remove_box(image: np.ndarray, box: tuple[float, float, float, float], grow: float, fill: str = "lung") -> np.ndarray:
    """(S, S) uint8 with the box (model pixels: xmin, ymin, xmax, ymax), grown around its centre, emptied.

    `lung`: the box's pixels inside the lung fields' hulls (`lungcrop.lung_region`, which holds a tumour against the
    chest wall or the mediastinum) set to the aerated lung's median grey, so the tumour becomes lung and the chest
    wall, spine and mediastinum beside it stay. `inpaint`: the whole box filled from its surroundings (OpenCV's
    Telea); where a tumour abuts the chest wall that fill is soft tissue too, a mass still (docs/results/synthetic-masses.md)."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * grow / 2, (y1 - y0) * grow / 2
    mask = np.zeros_like(image)
    mask[max(0, int(cy - h)) : int(np.ceil(cy + h)), max(0, int(cx - w)) : int(np.ceil(cx + w))] = 255
    if fill == "inpaint":
        return cv2.inpaint(image, mask, 5, cv2.INPAINT_TELEA)
    from lungcnn.data.lungcrop import find_lung_fields, lung_region

    fields = find_lung_fields(image)
    if not fields.found:
        raise ValueError(f"no lung fields to fill the box with aerated lung: {fields.reason}")
    out = image.copy()
    out[(mask > 0) & lung_region(fields)] = np.median(image[fields.lungs & (mask == 0)])
    return out


def main(argv: list[str] | None = None) -> int:
    from lungcnn.data.io import read_image
    from lungcnn.evaluation.annotated import figures
    from lungcnn.fileio import write_json
    from lungcnn.inference.predictor import Predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--boxes", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--grow", type=float, nargs="+", default=[1.0, 1.5])
    parser.add_argument("--fill", choices=["lung", "inpaint"], default="lung", help="what the box becomes (remove_box)")
    args = parser.parse_args(argv)

    predictor = Predictor.from_checkpoint(args.ckpt)
    if predictor.crop != "none":
        sys.exit(f"{args.ckpt}: crops to the lungs; boxes map onto uncropped models only")
    table = pd.read_csv(args.boxes).sort_values("instance_number").reset_index(drop=True)
    paths = [args.boxes.parent / f for f in table["file"]]
    images = np.stack([predictor.load(p) for p in paths])
    tumour = table["tumour"].to_numpy(int) == 1
    size = predictor.image_size
    boxes = {}
    for i in np.flatnonzero(tumour):
        height, width = read_image(paths[i], window=predictor.window).shape
        side = max(height, width)  # the slice's centred square pad, as `model_to_slice` undoes it
        dx, dy = (side - width) // 2, (side - height) // 2
        r = table.iloc[i]
        boxes[i] = tuple(v * size / side for v in (r.xmin + dx, r.ymin + dy, r.xmax + dx, r.ymax + dy))

    def scored(batch: np.ndarray) -> dict[str, np.ndarray]:
        predictions = predictor.predict_images(batch, [str(p) for p in paths])
        target = predictor.spec.series_target
        return {"probability": np.array([p.probabilities[target] for p in predictions]),
                "novelty": np.array([p.novelty for p in predictions]),
                "judged": np.array([p.answered for p in predictions])}

    def ranking(scores: dict[str, np.ndarray], by: str) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            frame = table.assign(probability=scores[by], judged=scores["judged"], peak_in_box="", cam_lung_mass="")
            frame.to_csv(Path(tmp) / "t.csv", index=False)
            f = figures(Path(tmp) / "t.csv", n_resamples=200)
        return {k: f[k] for k in ("auc", "auc_ci95", "first_tumour_rank", "most_suspicious")}

    rankings = ["probability"] + (["novelty"] if predictor.spec.novelty is not None else [])
    plain = scored(images)
    result = {"ckpt": str(args.ckpt), "tumour_slices": int(tumour.sum()), "fill": args.fill,
              "as_they_are": {by: ranking(plain, by) for by in rankings}, "tumours_removed": {}}
    for grow in args.grow:
        edited = images.copy()
        for i, box in boxes.items():
            edited[i] = remove_box(edited[i], box, grow, args.fill)
        after = scored(edited)
        result["tumours_removed"][f"box x {grow:g}"] = {
            by: {**ranking(after, by), "mean_change_on_tumour_slices": float(np.mean(after[by][tumour] - plain[by][tumour]))}
            for by in rankings}
    write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
