# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIR ?= runs/demo

.PHONY: venv bench-venv bench-lock demo test lint lock system-deps clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[all,dev]'
	touch $(STAMP)

# Re-resolve the pins after changing dependencies in pyproject.toml (then run the tests and commit requirements.lock).
lock: venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^wearfed' > requirements.lock.new
	(sed -n '1,2p' requirements.lock; cat requirements.lock.new) > requirements.lock.tmp && rm requirements.lock.new
	mv requirements.lock.tmp requirements.lock

# Flower's simulation engine (flwr[simulation] 1.42, the peer bench/flower_scale.py measures wearfed against) pins
# ray 2.55.1, protobuf < 7, fastapi 0.138 and more below requirements.lock's, so it cannot join .venv: .venv-bench
# holds only those packages and reads everything else from .venv (a .pth adds .venv's site-packages after its own).
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
site = $$($(1)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

bench-venv: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP) requirements-bench.lock
	test -x $(BENCH_VENV)/bin/python || $$($(BIN)/python -c 'import sys; print(sys._base_executable)') -m venv $(BENCH_VENV)
	echo "import site; site.addsitedir('$(call site,$(VENV))')" > $(call site,$(BENCH_VENV))/zz_wearfed_venv.pth
	$(BENCH_VENV)/bin/python -m pip install --quiet -c requirements-bench.lock -e '.[bench]'
	touch $(BENCH_STAMP)

bench-lock: bench-venv
	(sed -n '1,2p' requirements-bench.lock; $(BENCH_VENV)/bin/python -m pip freeze --exclude-editable \
	  --path $(call site,$(BENCH_VENV)) | grep -v '^wearfed') > requirements-bench.lock.tmp
	mv requirements-bench.lock.tmp requirements-bench.lock

demo: venv
	$(BIN)/wearfed demo --out $(DIR)

# Debian's mosquitto is what the tests run against, Debian's Chromium and its driver what the dashboard's browser
# tests drive; install them when missing (CI runs as root). Nothing downloads a browser of its own.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto)
	@(test -x /usr/bin/chromium && test -x /usr/bin/chromedriver) || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

# Two workers, one per core of the CI machine; each test file stays on one worker (module fixtures are built once).
TEST_WORKERS ?= 2

test: venv bench-venv system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile --durations=30

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs .pytest_cache
