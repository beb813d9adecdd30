# seckill-proxy: `make run` (sandbox + proxy in the foreground), `make test`, `make bench`.
SANDBOX ?= .sandbox
VENV := .venv/bin

.PHONY: deps run stop sandbox demo top test lint fuzz bench bench-hotrow bench-ceiling bench-modes bench-mixed bench-workers bench-readsplit bench-durability clean

deps:
	./scripts/install-deps.sh

sandbox: deps
	$(VENV)/python -m proxy.tools.sandbox start --dir $(SANDBOX)

run: sandbox
	@echo "DSN: mysql://app:app@127.0.0.1:6033/shop   (mysql -h127.0.0.1 -P6033 -uapp -papp shop)"
	@echo "admin: mysql -h127.0.0.1 -P6032 -uadmin -padmin    metrics: http://127.0.0.1:9104/metrics"
	exec $(VENV)/seckill-proxy --config conf/proxy.yaml

# A flash sale on the sandbox, directly and through the proxy (started here unless `make run` is up).
demo: sandbox
	WITH_BENCH=1 ./scripts/install-deps.sh
	$(VENV)/seckill-proxy demo --config conf/proxy.yaml --out demo-out

# The DBA's live view of a running proxy (`make run` in another terminal).
top:
	$(VENV)/seckill-proxy top --config conf/proxy.yaml

stop:
	$(VENV)/python -m proxy.tools.sandbox stop --dir $(SANDBOX)

lint:
	$(VENV)/ruff check proxy tests bench
	$(VENV)/mypy
	$(VENV)/lint-imports

test:
	WITH_TEST=1 ./scripts/install-deps.sh
	$(VENV)/ruff check proxy tests bench
	$(VENV)/mypy
	$(VENV)/lint-imports
	$(VENV)/pytest -q -p no:cacheprovider

# Fuzzing beyond the corpus `make test` runs: MINUTES per target (TLS upgrade, COM_CHANGE_USER,
# admin port, prepared-statement commands). Not part of `make test`.
MINUTES ?= 5
fuzz:
	WITH_TEST=1 ./scripts/install-deps.sh
	FUZZ_SECONDS=$$(( $(MINUTES) * 60 )) $(VENV)/pytest -q -p no:cacheprovider --timeout=0 tests/test_fuzz.py

bench:
	WITH_BENCH=1 ./scripts/install-deps.sh
	$(VENV)/python -m bench.core

bench-durability:
	WITH_BENCH=1 ./scripts/install-deps.sh
	$(VENV)/python -m bench.durability

bench-readsplit:
	WITH_BENCH=1 ./scripts/install-deps.sh
	$(VENV)/python -m bench.readsplit

# issue 24's table: H, C, P, Pc, workers 1 and 2, pinned and unpinned (bench/ceiling.py)
bench-hotrow bench-ceiling:
	WITH_BENCH=1 ./scripts/install-deps.sh
	$(VENV)/python -m bench.ceiling

# the hot-row modes (off / queue / merge / auto) across threads and SKUs (bench/hotrow.py)
bench-modes:
	WITH_BENCH=1 ./scripts/install-deps.sh
	$(VENV)/python -m bench.hotrow

bench-mixed:
	WITH_BENCH=1 ./scripts/install-deps.sh
	$(VENV)/python -m bench.mixed

bench-workers:
	WITH_BENCH=1 ./scripts/install-deps.sh
	$(VENV)/python -m bench.workers

clean:
	$(VENV)/python -m proxy.tools.sandbox destroy --dir $(SANDBOX) || true
