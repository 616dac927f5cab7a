# Two commands do everything on a fresh Python 3.11 machine (no GPU, no model hub):
#   make demo   set up .venv, then run the main job: LiveEdit beside EasyEdit's editors on the toy world (quick preset)
#   make test   set up .venv, then run the test suite on each EasyEdit target (what CI runs; with CI set it adds the
#               slow tests). Target 1, the PyPI wheel, always runs. Target 2, EasyEdit's GitHub main, runs when
#               EASYEDIT_MAIN names a checkout of it (.ci/run points it at ../shared/third_party/EasyEdit-14cea82);
#               otherwise the summary says NOT RUN, and why.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

# EasyEdit main: a checkout (it has no setup.py: it goes on PYTHONPATH) and its own venv, built from the checkout's
# requirements.txt with torch held at the version the wheel target uses (constraints-main.txt).
EASYEDIT_MAIN ?=
MAIN := $(abspath $(EASYEDIT_MAIN))
VENV_MAIN := .venv-main
MAIN_STAMP := $(VENV_MAIN)/.installed
MAIN_PYTHON := PYTHONPATH=$(MAIN) $(VENV_MAIN)/bin/python
# The main target's focused session: registration, the import fixes and shims per target, the editor API and main's own
# editor, the trainer, the backbones on tiny models, the comparison, the NaN guard and the examples.
MAIN_TESTS := tests/test_registration.py tests/test_hparams.py tests/test_compat_imports.py \
	tests/test_compat_devices.py tests/test_compat_toyworld.py tests/test_compat_baselines.py \
	tests/test_trainer.py tests/test_easyedit_path.py tests/test_scoring_and_undo.py tests/test_main_editor.py \
	tests/test_backbones_real_families.py tests/test_backbones_chat_vlm.py tests/test_compare_targets.py \
	tests/test_nan_guard_toyworld.py tests/test_ike.py tests/test_examples.py tests/test_shipped_quality.py

.PHONY: setup setup-main demo compare artifacts test test-wheel test-main test-rebuild lint clean clean-main

setup: $(STAMP)

# easyeditor's own pins (torch 2.0.1, transformers 4.30.1, numpy 1.22) do not install on Python 3.11,
# so it goes in with --no-deps after the verified modern set in requirements.lock.
$(STAMP): requirements.lock setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps easyeditor==0.0.1.dev0
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# EasyEdit main's requirements.txt pins torch 2.9.1; the pin is swapped for torch 2.13.0 and held there by
# constraints-main.txt, so no package pulls another torch. requirements-main.txt adds what the plugin needs beyond
# main's list. The plugin goes in with --no-deps, so pip never touches main's transformers.
setup-main: $(MAIN_STAMP)

$(MAIN_STAMP): requirements-main.txt constraints-main.txt setup.cfg pyproject.toml
	@if [ -z "$(EASYEDIT_MAIN)" ] || [ ! -f "$(MAIN)/requirements.txt" ]; then \
		echo "setup-main: set EASYEDIT_MAIN to a checkout of EasyEdit main (got '$(EASYEDIT_MAIN)')"; exit 2; fi
	$(PYTHON) -m venv $(VENV_MAIN)
	sed -E 's/^torch==.*/torch==2.13.0/' $(MAIN)/requirements.txt > $(VENV_MAIN)/requirements-easyedit-main.txt
	$(VENV_MAIN)/bin/pip install --quiet --disable-pip-version-check -c constraints-main.txt \
		-r $(VENV_MAIN)/requirements-easyedit-main.txt -r requirements-main.txt
	$(VENV_MAIN)/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	cp $(MAIN)/requirements.txt $(VENV_MAIN)/requirements-built-from.txt
	touch $(MAIN_STAMP)

demo: $(STAMP)
	$(BIN)/python -m easyedit_liveedit compare run=demo

compare: $(STAMP)
	$(BIN)/python -m easyedit_liveedit compare

# Everything the repository ships, rebuilt from scratch (long: the world's pretraining and three meta-trainings, once;
# BENCHMARKS.md, "Shipped artifacts"): the default toy world's backbone (artifacts/scenes/backbone/), then the
# LiveEdit, MEND and SERAC archives trained on it (artifacts/scenes/archives/).
artifacts: $(STAMP)
	$(BIN)/python -m easyedit_liveedit.toyworld --config scenes --force --ship
	$(BIN)/python -m easyedit_liveedit ship run.methods=[LiveEdit,MEND,MEND-tuned,SERAC,SERAC-tuned] run.retrain=true

# The wheel target: every test not marked slow or rebuild; CI (CI=true) runs the slow ones too (they use the shipped
# toy backbone and archives: nothing is pretrained or meta-trained from scratch).
test-wheel: $(STAMP)
	EASYEDIT_TARGET=wheel $(BIN)/python -m pytest -m "not slow and not rebuild"
	@if [ -n "$$CI" ]; then EASYEDIT_TARGET=wheel $(BIN)/python -m pytest -m "slow and not rebuild"; fi

# The tests that pretrain a toy backbone from scratch (the digits world; long, not in CI).
test-rebuild: $(STAMP)
	EASYEDIT_TARGET=wheel $(BIN)/python -m pytest -m rebuild

# The EasyEdit-main target: the focused session above, in .venv-main with the checkout on PYTHONPATH.
test-main: setup-main
	@if [ "$$(cat $(VENV_MAIN)/requirements-built-from.txt)" != "$$(cat $(MAIN)/requirements.txt)" ]; then \
		echo "test-main: $(VENV_MAIN) was built from another requirements.txt; run make clean-main"; exit 2; fi
	EASYEDIT_TARGET=main $(MAIN_PYTHON) -m pytest -m "not slow and not rebuild" $(MAIN_TESTS)

# Both targets, then one summary line per target; fails if either failed. Without EASYEDIT_MAIN (or with one that
# is not a checkout of EasyEdit) the main target is reported as NOT RUN with the reason.
test: $(STAMP)
	@wheel=PASSED; main=PASSED; \
	$(MAKE) --no-print-directory test-wheel || wheel=FAILED; \
	if [ -z "$(EASYEDIT_MAIN)" ]; then \
		main="NOT RUN (EASYEDIT_MAIN is not set; make test EASYEDIT_MAIN=<checkout of EasyEdit main> runs it)"; \
	elif [ ! -f "$(MAIN)/easyeditor/__init__.py" ] || [ ! -f "$(MAIN)/requirements.txt" ]; then \
		main="NOT RUN (EASYEDIT_MAIN=$(EASYEDIT_MAIN) is not a checkout of EasyEdit: no easyeditor/ or requirements.txt)"; \
	else \
		$(MAKE) --no-print-directory test-main || main=FAILED; \
	fi; \
	echo "== test summary: target wheel (easyeditor 0.0.1.dev0, .venv): $$wheel"; \
	echo "== test summary: target main (EasyEdit main, .venv-main): $$main"; \
	[ "$$wheel" = PASSED ] && [ "$$main" != FAILED ]

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(VENV_MAIN) .cache

clean-main:
	rm -rf $(VENV_MAIN)
