"""A small synthetic CT-like data set, so the demo runs on a fresh machine with no real data.

Modules: ``shapes`` (drawing primitives), ``phantom`` (one patient's slices), ``folder`` (writing the
data set: images, groups.csv, notice, parameters), ``__main__`` (``python -m lungcnn.data.synthetic``).
``masses`` is the one module that edits real slices: it draws a mass into a real normal slice's lung field, for
lesion experiments (scripts/synthetic_masses.py), not for the demo.

The images are drawn, not scanned: they are NOT medical data and say nothing about real lung cancer.
They only have to look enough like axial chest CT slices that the pipeline (reading, grouped splits,
training, calibration, the app) can be exercised end to end.

Layout written under ``root``::

    root/<class>/<class>_p<NNN>_s<SS>.png   8-bit grayscale ("L"), image_size x image_size, values 0..255
    root/groups.csv                         header ``file,label,group``; file relative to root, "/" separators
    root/SYNTHETIC.txt                      plain-words notice that the data is synthetic
    root/synthetic.json                     the generation parameters (used to make re-runs idempotent)

Pixel values (before noise): background (air outside the body) exactly 0, subcutaneous fat ~85,
soft tissue ~120, heart ~130, lung fields ~25 with faint texture and small vessels, lesions ~170-210
(a benign nodule may have a calcified core up to ~245), bone (ribs, sternum, spine) ~180-235.
Gaussian noise (sigma ~4-7, slightly correlated like CT grain) is added inside the body only.
Lesion sizes shrink by at most 30% across a patient's slices, so every lesion slice shows its lesion.

Classes: "normal" (no lesion), "benign" (1-2 small smooth round nodules, radius 3.5-6% of the image
size) and "malignant" (one larger lobulated, spiculated mass, radius 7.5-11.5% plus spikes, sometimes
touching the lung edge). One patient gives ``slices_per_patient`` near-identical slices (same
anatomy, small jitter, lesion size changing as through adjacent slices); the group column keeps a
patient's slices together so splits never leak a patient across train and test.

Everything is deterministic for a seed: each patient draws from ``np.random.default_rng([seed,
class code, patient])``, so the same parameters give byte-identical PNGs (on the same numpy/Pillow).
"""

from lungcnn.data.synthetic.folder import (
    CLASS_CODES,
    DEFAULT_N_PATIENTS,
    GROUPS_FILE,
    NOTICE_FILE,
    PARAMS_FILE,
    make_synthetic_dataset,
)
from lungcnn.data.synthetic.phantom import GENERATOR_VERSION, render_patient

__all__ = [
    "CLASS_CODES",
    "DEFAULT_N_PATIENTS",
    "GENERATOR_VERSION",
    "GROUPS_FILE",
    "NOTICE_FILE",
    "PARAMS_FILE",
    "make_synthetic_dataset",
    "render_patient",
]
