# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test lint bench redis-server
install: $(BIN)/.installed

demo: install
	$(BIN)/llm-runtime demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy benchmarks

# The shared-state tests start their own redis-server on a free port; Debian's package
# brings the binary (installed here when missing and we are root, as on CI).
redis-server:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } \
		|| { echo "redis-server is missing: apt-get install redis-server (as root)" >&2; exit 1; }

test: lint redis-server
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/admission.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/opcodes.py
	$(BIN)/python benchmarks/dispatch.py
	$(BIN)/python benchmarks/tokens.py
	$(BIN)/python benchmarks/chat_streaming.py
	$(BIN)/python benchmarks/harness.py
	$(BIN)/python benchmarks/shared.py
	$(BIN)/python benchmarks/gateway.py
