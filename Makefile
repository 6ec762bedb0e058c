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
	$(PY) -m pip install -q -e '.[dev,openvino,video,triton]'
	# sam2 is a source-only package whose isolated build would download a second torch: build it
	# against the torch installed above, without its optional CUDA extension (not used by segdeploy).
	$(PY) -m pip install -q --upgrade setuptools wheel && $(PY) -m pip install -q 'hydra-core>=1.3.2' 'iopath>=0.1.10' 'onnxslim>=0.1.50'
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation 'sam2>=1.1'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m segdeploy train --dataset synthetic --model unet --encoder resnet18 --size 128 \
		--epochs 3 --max-images 192 --batch-size 16 --output $(DEMO_RUN) --overwrite
	$(PY) -m segdeploy eval $(DEMO_RUN)
	$(PY) -m segdeploy export $(DEMO_RUN) --precision fp32,int8 --deploy
	$(PY) -m segdeploy parity $(DEMO_RUN) --backends onnxruntime,openvino,onnxruntime+deploy,openvino+deploy \
		--precision fp32,int8
	$(PY) -m segdeploy bench $(DEMO_RUN) --backends torch,onnxruntime,openvino,onnxruntime+deploy,openvino+deploy \
		--precision fp32,int8 --batch-sizes 1,8 --max-time 3
	$(PY) -m segdeploy deploy $(DEMO_RUN) --triton
	$(PY) examples/synthetic_images.py $(DEMO_RUN)/demo_images --size 128 --count 8
	$(PY) -m segdeploy predict $(DEMO_RUN) $(DEMO_RUN)/demo_images --overwrite
	$(PY) $(DEMO_RUN)/deploy/predict.py $(DEMO_RUN)/demo_images --output $(DEMO_RUN)/bundle_masks
	@echo "demo results in $(DEMO_RUN)/: metrics.json export/ parity.json bench.json bench.md deploy/ (the bundle," \
		"triton/) predict/demo_images/ (segdeploy predict) bundle_masks/ (the bundle's predict.py)"

# Two pytest-xdist workers, a test file per worker at a time (module fixtures train once): the suite is
# mostly single-threaded Python, so two cores halve it. (Each worker is one process with one OpenVINO Core:
# benchmarks/openvino_altstack_repro.py is why that matters.) `$(PY) -m pytest -q` alone runs it serially.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache
