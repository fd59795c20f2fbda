# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIR ?= runs/demo

.PHONY: venv demo test lint system-deps clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/wearfed demo --out $(DIR)

# Debian's mosquitto is what the tests run against; install it when missing (CI runs as root).
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto)

test: venv system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
