# Quick start: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv on first use and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segdeploy-installed
DEMO_RUN := runs/demo

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,openvino,video]'
	# sam2 is a source-only package whose isolated build would download a second torch: build it
	# against the torch installed above, without its optional CUDA extension (not used by segdeploy).
	$(PY) -m pip install -q --upgrade setuptools wheel && $(PY) -m pip install -q 'hydra-core>=1.3.2' 'iopath>=0.1.10' 'onnxslim>=0.1.50'
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation 'sam2>=1.1'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m segdeploy train --dataset synthetic --model unet --encoder resnet18 --size 128 \
		--epochs 3 --max-images 192 --batch-size 16 --output $(DEMO_RUN) --overwrite
	$(PY) -m segdeploy eval $(DEMO_RUN)
	$(PY) -m segdeploy export $(DEMO_RUN)
	$(PY) -m segdeploy parity $(DEMO_RUN) --backends onnxruntime
	$(PY) -m segdeploy bench $(DEMO_RUN) --backends torch,onnxruntime --batch-sizes 1,8
	@echo "demo results in $(DEMO_RUN)/: config.toml history.csv metrics.json eval/ export/ parity.json bench.json bench.md *.png"

# OpenVINO's tests run in a pytest process of their own: after ~380 other tests in one process, OpenVINO
# crashed that process (SIGSEGV, not traced); each half alone passes.
test: $(STAMP)
	$(PY) -m pytest -q -m "not openvino"
	$(PY) -m pytest -q -m openvino

clean:
	rm -rf $(VENV) runs .pytest_cache
