#!/usr/bin/env bash
# Grouped k-fold cross-validation of one configuration, end to end: train every fold (one Hydra
# multirun), calibrate and evaluate each fold, then pool the folds with scripts/aggregate_cv.py.
#
#   scripts/run_cv.sh OUT_DIR [HYDRA_OVERRIDES...]
#   scripts/run_cv.sh outputs/cv/base experiment=iqothnccd_3class data.root=../shared/data/iqothnccd-dev
#
# Environment: FOLDS (default 5), PY (default .venv/bin/python), CALIBRATE (extra lungcnn.calibrate
# overrides) and REPORT (report folder name, default "report"): e.g. evaluate the same folds again
# with flip test-time augmentation, without retraining:
#   REPORT=report_tta CALIBRATE="calibration.tta=flip" scripts/run_cv.sh outputs/cv/base
# Finished steps are skipped, so an interrupted run resumes when rerun with the same arguments.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: scripts/run_cv.sh OUT_DIR [HYDRA_OVERRIDES...]" >&2
  exit 2
fi
out=$1
shift
py=${PY:-.venv/bin/python}
folds=${FOLDS:-5}
report=${REPORT:-report}
read -r -a calibrate_args <<< "${CALIBRATE:-}"

if [ ! -f "$out/$((folds - 1))/metrics.json" ]; then
  "$py" -m lungcnn.train -m "$@" data.n_folds="$folds" data.fold="$(seq -s, 0 $((folds - 1)))" \
    trainer.enable_progress_bar=false hydra.sweep.dir="$out"
fi
calibrated=best.calibrated.ckpt
summary=cv_summary.json
if [ "$report" != report ]; then
  calibrated=best.$report.ckpt
  summary=cv_summary_$report.json
fi
for ((k = 0; k < folds; k++)); do
  job=$out/$k
  [ -f "$job/$report/predictions.csv" ] && continue
  "$py" -m lungcnn.calibrate ckpt="$job/checkpoints/best.ckpt" out="$job/checkpoints/$calibrated" overwrite=true \
    "${calibrate_args[@]}"
  "$py" -m lungcnn.evaluate ckpt="$job/checkpoints/$calibrated" out_dir="$job/$report"
done
"$py" scripts/aggregate_cv.py --multirun "$out" --report-dir "$report" --out "$out/$summary"
