# Sluice: `make run` starts the server with a demo mesh; `make test` installs what the
# tests need and runs them all. See README.md.

GO          ?= go
BIN         := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Tests that need system servers (Redis, Prometheus) carry the integration build tag.
TEST_TAGS   := integration
PKGS        := ./...

.PHONY: all build run test test-unit test-integration bench bench-routing fuzz lint deps clean

all: build

build:
	$(GO) build -o $(BIN)/sluice ./cmd/sluice
	$(GO) build -o $(BIN)/sluice-loadtest ./cmd/sluice-loadtest

run: build
	$(BIN)/sluice serve --demo

deps:
	./hack/install-deps.sh

test: deps lint
	$(GO) test -race -count=1 -tags $(TEST_TAGS) -timeout 15m $(PKGS)

# The fast tests alone: no system servers, no race detector.
test-unit:
	$(GO) test -count=1 -short $(PKGS)

test-integration: deps
	$(GO) test -race -count=1 -tags $(TEST_TAGS) -run Integration -timeout 15m $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags $(TEST_TAGS) $(PKGS)
	$(GO) run $(STATICCHECK) -tags $(TEST_TAGS) $(PKGS)

# Benchmarks report figures; they assert nothing. BENCHTIME shortens or lengthens them.
BENCHTIME ?= 2s
bench: build deps bench-routing
	$(GO) test -tags $(TEST_TAGS) -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./mixer/... ./adapters/...
	$(BIN)/sluice-loadtest report --server $(BIN)/sluice
	$(BIN)/sluice-loadtest wakeup
	$(BIN)/sluice-loadtest check --server $(BIN)/sluice --search 3

# The routing core: computing every resource of 1,000 services (10,000 endpoints, 2,000
# VirtualServices); convergence of 1,000 simulated sidecars (state of the world and delta)
# after a change; server memory per connected sidecar. Clients run on this machine too.
bench-routing:
	$(GO) test ./routing -run '^$$' -bench 'Build' -benchmem -benchtime 5x
	$(GO) test ./routing -run '^$$' -bench 'Convergence' -benchtime 3x
	$(GO) test ./routing -run '^$$' -bench 'MemoryPerClient' -benchtime 1x

# Runs each fuzz target for FUZZTIME (the seed corpora also run in `make test`).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./mixer/envoy -run '^$$' -fuzz FuzzDecodeHTTP -fuzztime $(FUZZTIME)
	$(GO) test ./mixer/envoy -run '^$$' -fuzz FuzzDecodeTCP -fuzztime $(FUZZTIME)
	$(GO) test ./mixer/envoy -run '^$$' -fuzz FuzzScanMessage -fuzztime $(FUZZTIME)
	$(GO) test ./mixer/envoy -run '^$$' -fuzz FuzzCheckFields -fuzztime $(FUZZTIME)
	$(GO) test ./mixer/envoy -run '^$$' -fuzz FuzzRateLimitFields -fuzztime $(FUZZTIME)
	$(GO) test ./mixer/config -run '^$$' -fuzz FuzzParseFile -fuzztime $(FUZZTIME)
	$(GO) test ./mixer/check -run '^$$' -fuzz FuzzCheckRequest -fuzztime $(FUZZTIME)
	$(GO) test ./mixer/check -run '^$$' -fuzz FuzzRateLimitRequest -fuzztime $(FUZZTIME)
	$(GO) test ./adapters/list -run '^$$' -fuzz FuzzParseFile -fuzztime $(FUZZTIME)
	$(GO) test ./adapters/redisquota -run '^$$' -fuzz FuzzReadReply -fuzztime $(FUZZTIME)
	$(GO) test ./mixer/h2unary -run '^$$' -fuzz FuzzConn -fuzztime $(FUZZTIME)

clean:
	rm -rf $(BIN)
