# pvq — the two commands a user needs are `make demo` and `make test` (see README.md).
PYTHON ?= python3
export PVQ_CACHE ?= $(HOME)/.cache/pvq
# The peer (llama.cpp) is built for this CPU but without AMX: its AMX matmul crashes here on Q8_0/Q4 models.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
PEER_CMAKE_ARGS := -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'

.PHONY: setup demo test test-fast models runtime asan cuda bench clean

# Installs every dependency from the project's own files. torch goes first, pinned to the CPU build
# these machines carry, so that the package's own `torch==2.13.0` requirement is already satisfied.
setup:
	$(PYTHON) -m pip install --quiet torch==2.13.0
	CMAKE_ARGS="$(PEER_CMAKE_ARGS)" $(PYTHON) -m pip install --quiet -e '.[convert,peer,server,test]'
	$(PYTHON) -c "import llama_cpp, sys; sys.exit(b'AMX_INT8 = 1' in llama_cpp.llama_print_system_info())" || \
	  CMAKE_ARGS="$(PEER_CMAKE_ARGS)" $(PYTHON) -m pip install --quiet --force-reinstall --no-deps --no-cache-dir \
	    "llama-cpp-python==$$($(PYTHON) -c 'import llama_cpp; print(llama_cpp.__version__)')"
	@# pyenv finds new commands (the package's pvqrun) only through its shims
	@if command -v pyenv >/dev/null; then pyenv rehash; fi
	$(MAKE) runtime

# pvqrun on PATH is the package's console script, which runs runtime/build/pvqrun in an editable install.
runtime:
	$(MAKE) -C runtime

models: setup
	$(PYTHON) -m models.smollm2

demo: models
	$(PYTHON) -m models.demo

test: models
	$(PYTHON) -m pytest tests

# The unit tests that need neither the peer, SmolLM2 nor a converted model (a few minutes less than `test`;
# after `make setup` once).
test-fast: runtime
	$(PYTHON) -m pytest tests -m "not heavy" -q

asan:
	$(MAKE) -C runtime asan

# The CUDA backend (docs/cuda.md): compiles and links with the CUDA toolkit, no GPU needed.
cuda:
	$(MAKE) -C runtime cuda

# Benchmarks (minutes each); they print their tables and the docs/ pages quote them.
bench: models
	$(PYTHON) -m pip install --quiet -e '.[bench]'
	$(PYTHON) bench/bench_runtime.py
	$(PYTHON) bench/bench_pvq.py
	$(PYTHON) -m bench.bench_codec
	$(PYTHON) -m bench.rd_codec
	$(PYTHON) -m bench.quality
	$(PYTHON) -m bench.results
	$(PYTHON) bench/bench_bindings.py
	$(PYTHON) bench/bench_server.py

clean:
	$(MAKE) -C runtime clean
