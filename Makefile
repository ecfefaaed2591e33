# vidmini — common tasks. Every target sets up what it needs (a venv in .venv, torch installed first).
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned and installed before the project: on CPU-only machines this resolves to the CPU wheel.
TORCH ?= torch==2.13.0
VIDEO ?= sample_videos/scenes.mp4
QUESTION ?= What colours does the screen show, in order?

.PHONY: install test bench demo demo-offline samples clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/vidmini ask $(VIDEO) "$(QUESTION)"

# The whole pipeline on a tiny random checkpoint: no download, no GPU, nonsense answers.
demo-offline: install
	$(PY) -m vidmini.testing.tiny_checkpoint /tmp/vidmini-tiny >/dev/null
	$(VENV)/bin/vidmini ask --model /tmp/vidmini-tiny $(VIDEO) "$(QUESTION)"

bench: install
	$(PY) bench/decode.py
	$(PY) bench/engine.py

samples: install
	$(PY) sample_videos/make_samples.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
