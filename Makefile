# pvq — the two commands a user needs are `make demo` and `make test` (see README.md).
PYTHON ?= python3
SCRIPTS := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PVQ_CACHE ?= $(HOME)/.cache/pvq

.PHONY: setup demo test models runtime asan bench clean

# Installs every dependency from the project's own files. torch goes first, pinned to the CPU build
# these machines carry, so that the package's own `torch==2.13.0` requirement is already satisfied.
setup:
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[peer,test]'
	$(MAKE) runtime

runtime:
	$(MAKE) -C runtime
	ln -sf $(CURDIR)/runtime/build/pvqrun $(SCRIPTS)/pvqrun

models: setup
	$(PYTHON) -m models.smollm2

demo: models
	$(PYTHON) -m models.demo

test: models
	$(PYTHON) -m pytest tests

asan:
	$(MAKE) -C runtime asan

bench: models
	$(PYTHON) -m bench.run_all

clean:
	$(MAKE) -C runtime clean
