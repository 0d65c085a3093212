# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= conf/site.ini
# Debian packages of the real peers the tests drive: sipp, baresip, kamailio,
# linphonec (the SHA-256 digest client), stunnel (TLS in front of sipp) and
# chromium (headless, loads the admin pages); systemd-analyze and logrotate
# check the shipped unit and logrotate file.
DEB_PEERS := sip-tester baresip kamailio linphone-cli stunnel4 systemd logrotate chromium
DEB_BINS := sipp baresip kamailio linphonec stunnel4 systemd-analyze logrotate chromium

.PHONY: run test bench install install-test peers dist clean fuzz soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# Installed editable in compat mode: the project root goes on sys.path, so
# twistd finds twisted/plugins/ from the source tree.
install: $(BIN)/python
	$(BIN)/pip install -q -e . --config-settings editable_mode=compat

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat

# Installs missing peers when run as root; otherwise says what is missing.
peers:
	@missing=""; for b in $(DEB_BINS); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $(DEB_PEERS)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEB_PEERS); \
	  else echo "not root: cannot install$$missing; tests needing them will fail"; fi; \
	fi

run: install
	mkdir -p var
	$(BIN)/twistd -n --pidfile= sosimple-proxy -c $(CONFIG)

# As root the peers were just installed: a test skipping for want of one fails.
test: install-test peers
	SOSIMPLE_REQUIRE_PEERS=$$([ "$$(id -u)" = 0 ] && echo 1 || echo 0) $(BIN)/python -m pytest -q -ra

# opendht is the overlay bench's reference (bench/overlay_ring.py), never a
# test dependency; without it that section says so instead of comparing.
bench: install-test peers
	@$(BIN)/pip install -q opendht || echo "bench: could not install the opendht wheel; overlay_ring runs without its reference"
	$(BIN)/python -m bench

# A wheel and an sdist in dist/ (the wheel is built from the sdist, which
# proves the sdist complete).  `build` comes from the package index, as in a
# fresh clone; the build itself runs in build's own isolated environment.
dist: $(BIN)/python
	$(BIN)/pip install -q build
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) build dist *.egg-info var .pytest_cache .hypothesis

# Coverage-guided fuzzing of the parser, framing, the stack's input and the
# AMP decoder (FUZZ_SECONDS each), then the live fuzzer: a million mutated
# datagrams and malformed TCP/TLS streams at a proxy in its own namespace.
FUZZ_SECONDS ?= 300
FUZZ_DATAGRAMS ?= 1000000
fuzz: install-test
	$(BIN)/pip install -q -e '.[fuzz]' --config-settings editable_mode=compat
	$(BIN)/python -m tests.fuzz.run --seconds-per-target $(FUZZ_SECONDS)
	$(BIN)/python -m tests.fuzz.live --datagrams $(FUZZ_DATAGRAMS)

# The lab (root): ten proxies in network namespaces on one bridge with lossy
# links; every fault scenario, the floods, then a SOAK_SECONDS soak of
# SOAK_USERS users with Poisson churn; prints the figures of each.
SOAK_SECONDS ?= 600
SOAK_USERS ?= 10000
soak: install-test
	$(BIN)/python -m tests.lab --soak-seconds $(SOAK_SECONDS) --users $(SOAK_USERS)
