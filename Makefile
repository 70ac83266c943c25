# wardgate developer entry points. `make test` is what CI runs (via .ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := test
.PHONY: venv test demo bench clean distclean

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when pyproject.toml, setup.py or a compiled accelerator's source is newer than the stamp.
$(STAMP): pyproject.toml setup.py $(wildcard gateway_container/wardgate/*/*.pyx gateway_container/wardgate/*/*/*.pyx) | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

# Plain invocations: any non-zero exit fails the target, including pytest's
# exit 5 ("no tests collected").
test: venv
	$(BIN)/lint-imports
	$(BIN)/flake8 --select=F gateway_container functions infra tests bench localstack
	$(BIN)/pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/python -m wardgate.devtools.demo

bench: venv
	$(BIN)/python bench/pg_overhead.py --audit-modes off,write,always --repeat 3
	$(BIN)/python bench/audit_verify_speed.py
	$(BIN)/python bench/approval_latency.py

# Also the compiled accelerators (and the stamp, so that the next `make` builds it again).
clean:
	rm -rf build dist .pytest_cache .import_linter_cache .wardgate wardgate-audit .wardgate-demo
	rm -f $(STAMP)
	find gateway_container \( -name '*.so' -o -name '_*_fast.c' -o -name '_*_fast.html' \) -type f -delete
	find . -path ./$(VENV) -prune -o -name '*.egg-info' -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# clean, and the virtualenv too.
distclean: clean
	rm -rf $(VENV)
