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

.PHONY: install run job test bench ui dashboard lint format clean reproduce-all reference-reports $(addprefix reproduce-,$(PAPERS))

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'

# The main job: EventGraD's smoke reproduction on the embedded digits data (runs tracked in
# ./mlflow.db, claims checked, report in out/reports/eventgrad/; all of it git-ignored).
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

# The committed reports/<paper>/ folders, rebuilt from a clean tree only (each report then
# names that tree's commit); runs of this commit already in the store are reused.
reference-reports:
	@if [ -n "$$(git status --porcelain)" ]; then \
		echo "reference-reports: the tree has local changes; commit or stash them first" >&2; \
		git status --short >&2; exit 1; fi
	@for p in $(PAPERS); do \
		$(BIN)/suite reproduce $$p --profile $(PROFILE) --out reports/$$p \
			|| echo "reference-reports: $$p: some claims fail or runs failed (see its report)"; \
	done

test:
	$(BIN)/pytest -q

bench:
	$(BIN)/pytest -q -m bench --benchmark-columns=min,mean,max,rounds tests/benchmarks

ui:
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_URI) --host 127.0.0.1 --port 5000

# Optuna's dashboard on the sweeps' studies (optuna.db), on this machine only.
OPTUNA_STORAGE ?= sqlite:///optuna.db
dashboard:
	$(BIN)/optuna-dashboard $(OPTUNA_STORAGE) --host 127.0.0.1 --port 8080

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .pytest_cache .ruff_cache .benchmarks out
