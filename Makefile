# Two commands do everything on a fresh Python 3.11 machine (no GPU, no model hub):
#   make demo   set up .venv, then run the main job: LiveEdit beside EasyEdit's editors on the toy world (quick preset)
#   make test   set up .venv, then run the test suite (what CI runs; with CI set it adds the slow tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup demo compare test lint clean

setup: $(STAMP)

# easyeditor's own pins (torch 2.0.1, transformers 4.30.1, numpy 1.22) do not install on Python 3.11,
# so it goes in with --no-deps after the verified modern set in requirements.lock.
$(STAMP): requirements.lock setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps easyeditor==0.0.1.dev0
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m easyedit_liveedit compare run=quick

compare: $(STAMP)
	$(BIN)/python -m easyedit_liveedit compare

# The default run skips tests marked slow (they build and use the full toy world); CI (CI=true) runs them too.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"
	@if [ -n "$$CI" ]; then $(BIN)/python -m pytest -m slow; fi

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .cache
