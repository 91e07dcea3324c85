"""Training: building the data module, model, callbacks and trainer from `conf/` and fitting them (`train`), the
config checks run before any work (`config_check`), two-stage fine-tuning and exact resume (`callbacks/`), atomic
checkpoint writes (`checkpoint_io`), and the environment check behind `lungcnn doctor` (`doctor`)."""
