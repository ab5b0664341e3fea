# The two commands of the README: `make demo` and `make test`. Everything else is their set-up.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pip keeps no cache: the CUDA build of torch alone is several GB, and CI disks can be small.
export PIP_NO_CACHE_DIR := 1
# Re-install only when the dependency list (or how it is installed) changes.
DEV_STAMP := $(VENV)/.installed-dev
# Label Studio in a virtual environment of its own: its pins would fight ours (about 1 GB).
LABEL_STUDIO_VENV ?= .labelstudio-venv
LABEL_STUDIO_VERSION := 1.23.2
LABEL_STUDIO_STAMP := $(LABEL_STUDIO_VENV)/.installed-$(LABEL_STUDIO_VERSION)

.PHONY: test demo lint setup system-deps labelstudio clean

system-deps:
	@scripts/install-system-deps.sh

$(DEV_STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[trainer,skypilot,dev,edge-openvino]'
	@# ultralytics pulls opencv-python (GUI build, needs libGL) into the same cv2/ folder as
	@# the headless build: keep only the headless one.
	$(PY) -m pip uninstall -q -y opencv-python opencv-python-headless
	$(PY) -m pip install -q --no-deps opencv-python-headless
	YOLO_CONFIG_DIR=$(abspath $(VENV))/ultralytics-config $(PY) -c 'import cv2, torch, ultralytics, onnxruntime, openvino, sky'
	@touch $@

setup: system-deps $(DEV_STAMP)

$(LABEL_STUDIO_STAMP):
	@test -x $(LABEL_STUDIO_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/python -m pip install -q --upgrade pip
	$(LABEL_STUDIO_VENV)/bin/python -m pip install -q 'label-studio==$(LABEL_STUDIO_VERSION)'
	$(LABEL_STUDIO_VENV)/bin/python -c 'import label_studio'
	@touch $@

labelstudio: $(LABEL_STUDIO_STAMP)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup labelstudio lint
	$(PY) -m pytest

demo: setup
	$(PY) -m testing.demo --work-dir .demo

clean:
	rm -rf $(VENV) $(LABEL_STUDIO_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
