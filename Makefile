# Set-up, demo, tests and checks for covidct. Run `make help` for the list.
#
# Every path below is relative to the repository root, so the targets also
# work when that root contains spaces.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.covidct-installed

# torch goes first and pinned: on PyPI a plain `torch` for Linux is the CUDA
# build (several GB), and any later package that depends on torch (monai)
# would pull that build if torch were not already installed. Where pip is
# configured with a local CPU wheel of this version, the pin selects it.
# Set TORCH on the command line to install another version or build.
TORCH ?= torch==2.13.0

# The radiomics package is installed here and not listed in pyproject.toml:
# the fork pyradiomics-bhklab and the original pyradiomics both install the
# import package `radiomics`, so declaring one of them as a dependency would
# overwrite the other in environments that already have it. The fork builds
# with ordinary build isolation on Python 3.11 and gives the same feature
# values as pyradiomics 3.0.1, which has no wheel for 3.11 and only builds
# with --no-build-isolation after numpy and versioneer are installed.
RADIOMICS ?= pyradiomics-bhklab==3.1.4

DEMO_OUT := out/demo

.PHONY: help venv demo test lint benchmark clean distclean

help:
	@echo "make venv       create $(VENV)/ and install covidct with its tools"
	@echo "make demo       analyse the sample CT (P002) into $(DEMO_OUT)/"
	@echo "make test       run the test suite (installs chromium when root)"
	@echo "make lint       ruff check, ruff format --check, mypy on src/"
	@echo "make benchmark  run every script in benchmarks/"
	@echo "make clean      remove outputs and caches; distclean also $(VENV)/"

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install numpy
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install "$(RADIOMICS)"
	$(BIN)/python -c "import radiomics, torch, SimpleITK"
	touch $(STAMP)

# The sample module prints the folder of the sample series; it downloads the
# series only when no verified local copy exists (see docs/data.md).
demo: venv
	@sample_dir="$$($(BIN)/python -m covidct.sample)" || exit 1; \
	echo "Sample CT: $$sample_dir"; \
	$(BIN)/covidct analyze "$$sample_dir" -o $(DEMO_OUT)

# The HTML rendering test drives Debian's chromium through playwright and is
# skipped when /usr/bin/chromium is absent. pytest exit status 5 means that
# no test was collected, which is reported as a failure here.
test: venv
	@if [ -x /usr/bin/chromium ]; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing chromium for the HTML rendering test"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium || { \
			echo "error: apt-get could not install chromium;" \
				"install it by hand or run the tests as a non-root user" \
				"to skip the HTML rendering test" >&2; \
			exit 1; }; \
	else \
		echo "note: /usr/bin/chromium not found and not running as root:" \
			"the HTML rendering test will be skipped"; \
	fi
	@$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then \
		echo "error: pytest collected no tests" >&2; \
		exit 1; \
	fi; \
	exit $$status

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src

benchmark: venv
	@found=0; \
	for script in benchmarks/*.py; do \
		[ -e "$$script" ] || continue; \
		found=1; \
		echo "== $$script"; \
		$(BIN)/python "$$script" || exit 1; \
	done; \
	if [ $$found = 0 ]; then echo "No benchmark scripts in benchmarks/"; fi

clean:
	rm -rf out build dist .pytest_cache .ruff_cache .mypy_cache
	find src tests benchmarks -name __pycache__ -type d -prune \
		-exec rm -rf {} + 2>/dev/null || true
	rm -rf src/*.egg-info

distclean: clean
	rm -rf $(VENV)
