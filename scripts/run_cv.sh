#!/usr/bin/env bash
# Grouped k-fold cross-validation of one configuration, end to end: train every fold (one Hydra
# multirun), calibrate and evaluate each fold, then pool the folds with `python -m lungcnn.cv summary`.
#
#   scripts/run_cv.sh OUT_DIR [HYDRA_OVERRIDES...]
#   scripts/run_cv.sh outputs/cv/base experiment=iqothnccd_3class data.root=../shared/data/iqothnccd-dev
#
# Environment: FOLDS (default 5), PY (default .venv/bin/python), CALIBRATE (extra lungcnn.calibrate
# overrides), REPORT (report folder name, default "report") and CKPT (which checkpoint of each fold:
# best = highest validation AUC, the default, or last): e.g. evaluate the same folds again, without
# retraining, with flip test-time augmentation, or from the last epoch's weights:
#   REPORT=report_tta CALIBRATE="calibration.tta=flip" scripts/run_cv.sh outputs/cv/base
#   REPORT=report_last CKPT=last scripts/run_cv.sh outputs/cv/base
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
ckpt=${CKPT:-best}
read -r -a calibrate_args <<< "${CALIBRATE:-}"

if [ ! -f "$out/$((folds - 1))/metrics.json" ]; then
  "$py" -m lungcnn.train -m "$@" data.n_folds="$folds" data.fold="$(seq -s, 0 $((folds - 1)))" \
    trainer.enable_progress_bar=false hydra.sweep.dir="$out"
fi
calibrated=$ckpt.calibrated.ckpt
summary=cv_summary.json
if [ "$report" != report ]; then
  calibrated=$ckpt.$report.ckpt
  summary=cv_summary_$report.json
fi
for ((k = 0; k < folds; k++)); do
  job=$out/$k
  [ -f "$job/$report/predictions.csv" ] && continue
  "$py" -m lungcnn.calibrate ckpt="$job/checkpoints/$ckpt.ckpt" out="$job/checkpoints/$calibrated" overwrite=true \
    "${calibrate_args[@]}"
  "$py" -m lungcnn.evaluate ckpt="$job/checkpoints/$calibrated" out_dir="$job/$report"
done
"$py" -m lungcnn.cv summary --multirun "$out" --report-dir "$report" --out "$out/$summary"
