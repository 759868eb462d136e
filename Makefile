# The Token's Journey — every command a reader, learner, instructor or CI needs.
# `make book` and `make test` each work on a fresh clone: they create the virtual environment first.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
COURSE_DIR ?= $(CURDIR)/course
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PORT ?= 8000
# Tests run on the reference solutions, on both cores (one worker per file keeps a notebook whole).
PYTEST_ARGS ?= -n 2 --dist loadfile

export COURSE_DIR
RUN := PYTHONPATH=$(CURDIR) $(VENV)/bin/

.PHONY: setup lint format book test test-fresh-venv release autograde report bench workspace grade-workspace serve clean

setup: $(VENV)/.ready

# torch first: without an NVIDIA GPU, its CPU build (a few hundred MB instead of several GB) from PyTorch's CPU
# index, when this machine can reach it. Where it cannot (an offline machine whose package mirror carries the CPU
# build), asking it anyway costs pip five retries for each of torch's dependencies: over a minute, measured.
# (Bytecode is compiled at install, as pip does by default: the grader's sandbox runs Python with -B, so a package
# installed with --no-compile would be compiled anew in every sandbox; CI took 4 minutes longer, measured.)
TORCH_INDEX = $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" \
	>/dev/null 2>&1 && echo "--extra-index-url $(TORCH_CPU_INDEX)")
PIP_INSTALL := $(PY) -m pip install

$(VENV)/.ready: requirements.txt
	$(PYTHON) -m venv $(VENV)
	@if nvidia-smi >/dev/null 2>&1; then \
		$(PIP_INSTALL) "torch==$(TORCH_VERSION)"; \
	else \
		$(PIP_INSTALL) "torch==$(TORCH_VERSION)" $(TORCH_INDEX); \
	fi
	$(PIP_INSTALL) -r requirements.txt
	touch $@

# One formatter and linter for the whole tree (pyproject.toml): course_lib, solutions, hidden, grader, tests, notebooks.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=$(CURDIR) $(PY) -m grader.cells --check book/ch[0-9][0-9]_*.ipynb

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

book: setup
	rm -rf _build/html
	COURSE_LIB_SOLUTIONS=1 $(RUN)jupyter-book build . -W -n --keep-going
	@echo "The book is in _build/html/index.html (make serve shows it)."

test: setup
	COURSE_LIB_SOLUTIONS=1 $(RUN)python -m pytest $(PYTEST_ARGS)

# A fresh virtual environment built from a released chapter's requirements.txt alone runs its visible checks (minutes).
test-fresh-venv: setup
	COURSE_FRESH_VENV=1 COURSE_LIB_SOLUTIONS=1 $(RUN)python -m pytest -o addopts="" -p no:cacheprovider tests/test_handout.py -k fresh_environment

release: setup
	$(RUN)python -m grader.course release

# JOBS=N judges N submissions at once (default: the number of cores). SHARD=k/n grades only the k-th of n shares
# of the students (several graders, one PostgreSQL gradebook: see the README). Safe to kill and run again: what was
# graded is kept; REGRADE=1 judges every submission again.
autograde: setup
	$(RUN)python -m grader.course autograde $(if $(JOBS),--jobs $(JOBS)) $(if $(SHARD),--shard $(SHARD)) \
		$(if $(filter 1 yes true,$(REGRADE)),--regrade)

# After make autograde: grades.csv again from the gradebook, and $(COURSE_DIR)/report/index.html with CSVs beside it.
report: setup
	$(RUN)python -m grader.course report

# The benchmarks behind the book's performance appendix: bench/results.json, then the appendix re-executed (minutes).
bench: setup
	$(RUN)python -m bench.run_all

# A learner studying alone: workspace/<chapter>/ for every chapter, the stubs a class gets (an existing one is kept).
workspace: setup
	$(RUN)python -m grader.workspace create

# The workspace graded by the real grader, hidden tests included (CHAPTERS="ch01 ch02" for some): the scores,
# and nbgrader's feedback page for each chapter in workspace/feedback/.
grade-workspace: setup
	$(RUN)python -m grader.workspace grade $(CHAPTERS)

serve:
	$(PYTHON) -m http.server $(PORT) --directory _build/html

clean:
	rm -rf _build .pytest_cache
