# The two commands of the README:  make demo  (main job on synthetic data)  and  make test.
# Both run the idempotent set-up first; it takes seconds when nothing changed.
PYTHON ?= python3.11
VENV_PY := .venv/bin/python

.PHONY: setup test demo bench clean-venv

setup:
	@$(PYTHON) tools/setup_env.py

test: setup
	@$(VENV_PY) -m pytest -n 2 -q test

demo: setup
	@$(VENV_PY) -m labeldistill_training.demo

bench: setup
	@$(VENV_PY) bench/run_all.py

clean-venv:
	rm -rf .venv
