# Two entry points for a fresh machine:
#   make demo   install into .venv, run the whole workflow on the generated demo corpus
#   make test   install into .venv, run the test suite
# CORES sets the number of parallel Snakemake jobs and threads (default: all cores).

VENV ?= .venv
PYTHON ?= python3
CORES ?= $(shell nproc 2>/dev/null || echo 2)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# The pipeline never reaches a network unless a parameter asks for a download.
export DVC_NO_ANALYTICS := 1
export TQDM_MININTERVAL := 5

.PHONY: install demo coco-tiny test lint clean-results

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[tts,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) --configfile config/demo/params.yaml
	@echo "Demo finished. Tables and figures: results/demo/ (start with results/demo/report.md)"

# Real MSCOCO images, masks and captions from ../shared/data/coco-tiny, speech synthesised.
coco-tiny: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) --configfile config/coco-tiny/params.yaml
	@echo "Finished. Tables and figures: results/coco-tiny/"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/demo/params.yaml

clean-results:
	rm -rf results/demo results/coco-tiny results/test-*
