# Set-up and everyday commands. `make install run` then `make test` is all a new machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Install torch first, pinned, so the CPU wheel is used where one is provided; on a GPU machine
# set TORCH_SPEC to the build you want (e.g. TORCH_SPEC="torch --index-url ...").
TORCH_SPEC ?= torch==2.13.0
NPROC ?= 4
MLFLOW_URI ?= sqlite:///mlflow.db
PROFILE ?= smoke
# Every folder of reproduce/ is a paper with a `make reproduce-<paper>` target.
PAPERS := $(patsubst reproduce/%/__init__.py,%,$(wildcard reproduce/*/__init__.py))

.PHONY: install run job data test bench bench-baseline bench-compare ui lint format clean \
	reproduce-all $(addprefix reproduce-,$(PAPERS))

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'

# The main job: EventGraD's smoke reproduction on the embedded digits data (runs tracked in
# ./mlflow.db, claims checked, report in reports/eventgrad/).
run: reproduce-eventgrad

# One 4-rank all-reduce SGD job on digits.
job:
	$(BIN)/suite run allreduce_sgd --nproc $(NPROC)

$(addprefix reproduce-,$(PAPERS)): reproduce-%:
	$(BIN)/suite reproduce $* --profile $(PROFILE)

# Dashed spellings of papers whose folder has underscores: make reproduce-adaptive-topk
DASHED := $(subst _,-,$(foreach p,$(PAPERS),$(if $(findstring _,$(p)),$(p))))
$(addprefix reproduce-,$(DASHED)): reproduce-%:
	$(BIN)/suite reproduce $(subst -,_,$*) --profile $(PROFILE)

# Short names: make reproduce-crossover
reproduce-crossover: reproduce-crossover_sgd
.PHONY: reproduce-crossover

reproduce-all: $(addprefix reproduce-,$(PAPERS))

# Fashion-MNIST (60k/10k real 28x28 images, MNIST's format; dataset fashion_mnist): Debian's
# package puts it in /usr/share/datasets/fashion-mnist, where the suite reads it by default.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		echo "fashion_mnist: installed in /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get install -y dataset-fashion-mnist \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist; }; \
	else \
		echo "no apt-get here: fetch Fashion-MNIST with torchvision into a folder DIR and pass"; \
		echo "--data-dir DIR:  $(BIN)/suite data download fashion_mnist --data-dir DIR"; \
	fi

test:
	$(BIN)/pytest -q

# pytest-benchmark. Saved results live in benchmarks/ (tracked), one folder per machine kind
# (Linux-CPython-3.11-64bit ...). bench-compare reruns the cheap benchmarks (BENCH_CHEAP: a few
# seconds to a minute each) and fails when a minimum is more than BENCH_MARGIN slower than the
# latest saved baseline of this machine kind; bench-baseline saves a new one (commit it).
# The margin is on the minimum, which load on a shared machine moves least; 60% is above the
# swings seen on the loaded 2-core machine the baseline was saved on (up to +39%, see README).
BENCH_STORAGE := file://./benchmarks
BENCH_CHEAP := tests/benchmarks/test_bench_cli.py tests/benchmarks/test_bench_compressors.py \
	tests/benchmarks/test_bench_divergence.py
BENCH_CHEAP_K := typo or first_line or throughput and 1e5 or parameter_check
BENCH_MARGIN ?= min:60%
BENCH_ARGS := -q -m bench --benchmark-columns=min,mean,max,rounds \
	--benchmark-storage=$(BENCH_STORAGE)

bench:
	$(BIN)/pytest $(BENCH_ARGS) tests/benchmarks

# One torch thread: a parallel op waits for its slowest thread, which load elsewhere stalls.
bench-baseline:
	OMP_NUM_THREADS=1 $(BIN)/pytest $(BENCH_ARGS) -k '$(BENCH_CHEAP_K)' --benchmark-save=baseline $(BENCH_CHEAP)

bench-compare:
	OMP_NUM_THREADS=1 $(BIN)/pytest $(BENCH_ARGS) -k '$(BENCH_CHEAP_K)' --benchmark-compare \
		--benchmark-compare-fail=$(BENCH_MARGIN) $(BENCH_CHEAP)

ui:
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_URI) --host 127.0.0.1 --port 5000

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .pytest_cache .ruff_cache .benchmarks
