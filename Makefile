# Two commands do everything on a fresh machine (see README.md):
#   make train   set up .venv from the lock, then train/evaluate/export on the synthetic dataset
#   make test    set up .venv from the lock, then run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup train test bench clean chromium

# --compile-bytecode: the .pyc files are written once here, so that a process does not compile
# TensorFlow's sources on every import where PYTHONDONTWRITEBYTECODE is set (import
# tensorflow, keras: 20 s of CPU without them, 6 s with them on the 2-core machine).
$(STAMP): requirements.lock setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m lsnet_tf.train $(ARGS)

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file in one of them, so
# that its module fixtures are built once.
TEST_WORKERS ?= 2

# tests/test_review.py renders predict's review page in headless Chromium (Debian's chromium
# package): installed here with apt-get when missing and make runs as root (quietly; nothing
# to do when it is there). Elsewhere install it yourself; that test fails, naming it, without.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing chromium (apt-get) for tests/test_review.py"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; } || \
	    echo "make: could not install chromium; tests/test_review.py will fail" >&2; \
	  else \
	    echo "make: chromium is missing (install it: apt-get install chromium); tests/test_review.py will fail" >&2; \
	  fi; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf runs cache saved_models/*/ .pytest_cache
