# minict's tasks.  Run as root: minict creates namespaces and mounts.
#
#   make install   system packages, a venv in $(PREFIX), and $(BINDIR)/minict
#   make demo      a local registry, a busybox image pushed to it, pulled and run
#   make test      the whole test suite against a real registry on loopback
#   make test-unprivileged  the tests that need no root, as nobody (as you, if you are not root)
#   make lint      ruff
#   make bench     minict against skopeo, umoci, tar, runc and crun (see bench/)

# Debian's python3, not a user's pyenv shim: the installed minict must work for root.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
PREFIX ?= /opt/minict
BINDIR ?= /usr/local/bin
VENV ?= .venv
# Time minict as an installed copy is found, not through the editable install's import hook.
BENCH_ARGS ?= --plain-venv --markdown

RUNTIME_PACKAGES = python3 python3-venv python3-seccomp ca-certificates nftables iproute2
TEST_PACKAGES = docker-registry skopeo umoci busybox-static apache2-utils zstd tmux gcc libc6-dev tar \
	libarchive-tools iproute2 nftables util-linux procps debootstrap podman runc keyutils
BENCH_PACKAGES = debootstrap runc crun hyperfine time

.PHONY: install uninstall demo test test-unprivileged lint bench deps test-deps bench-deps clean

install: deps
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet --disable-pip-version-check .
	$(call link_seccomp,$(PREFIX))
	ln -sf $(PREFIX)/bin/minict $(BINDIR)/minict
	@# Subordinate ids for `run --userns auto` (subuid(5)); kept by uninstall, like /var/lib/minict.
	$(PREFIX)/bin/python -m minict.runtime.subids
	@$(BINDIR)/minict --version

uninstall:
	rm -f $(BINDIR)/minict
	rm -rf --one-file-system $(PREFIX)

demo: test-deps
	@command -v minict >/dev/null || { echo "run 'make install' first" >&2; exit 1; }
	$(PREFIX)/bin/python tests/support/demo.py

test: test-deps $(VENV)/.installed $(VENV)/.seccomp
	@# pytest exits 5 when it collected no test: that must not pass.
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests ran" >&2; exit 1; fi; exit $$rc

# What a developer without root can run.  Run by root, it becomes nobody, with a clean
# environment but CI; pytest's cache stays off, as nobody cannot write the checkout.  A clone
# nobody cannot read (under /root, 0700) runs from a world-readable copy of the checkout and
# of the venv's packages under /tmp, by the interpreter the venv links to (as the tests do).
test-unprivileged: test-deps $(VENV)/.installed $(VENV)/.seccomp
	@as=""; python="$(VENV)/bin/python"; if [ "$$(id -u)" -eq 0 ]; then \
		as="setpriv --reuid=nobody --regid=nogroup --clear-groups --reset-env env CI=$${CI:-}"; \
		if ! (cd / && $$as $(abspath $(VENV))/bin/python -c 'import minict, pytest' 2>/dev/null); then \
			copy=$$(mktemp -d /tmp/minict-unprivileged-XXXXXX); trap 'rm -rf "$$copy"' EXIT; \
			echo "make test-unprivileged: nobody cannot read $(CURDIR)/$(VENV); running a copy in $$copy" >&2; \
			tar -c --exclude=./$(VENV) --exclude=./.git --exclude='__pycache__' . | tar -x --one-top-level="$$copy/src"; \
			cp -a "$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" "$$copy/site"; \
			chmod -R a+rX "$$copy"; python=$$(readlink -f $(VENV)/bin/python); cd "$$copy/src" || exit 1; \
			as="$$as PYTHONPATH=$$copy/src:$$copy/site"; \
			$$as PYTHONDONTWRITEBYTECODE=1 $$python -c 'import minict, pytest' || { \
				echo "make test-unprivileged: nobody cannot use the copy in $$copy either" >&2; exit 1; }; \
		fi; \
	fi; \
	$$as PYTHONDONTWRITEBYTECODE=1 $$python -m pytest -m 'not root or unprivileged' -p no:cacheprovider $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "make test-unprivileged: no tests ran" >&2; exit 1; fi; exit $$rc

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check minict tests bench

bench: bench-deps test-deps $(VENV)/.installed $(VENV)/.seccomp
	$(VENV)/bin/python bench/run.py all $(BENCH_ARGS)

# An existing venv is reused as it is: re-running `venv` over one made by
# another Python would rewrite its pyvenv.cfg and break it.
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# libseccomp's Python binding is Debian's (python3-seccomp, built for
# /usr/bin/python3, not on PyPI): link its one module file into a venv,
# rather than giving the venv all of the system's site-packages.
define link_seccomp
	ln -sf "$$($(PYTHON) -c 'import seccomp; print(seccomp.__file__)')" \
		"$$($(1)/bin/python -c 'import sysconfig; print(sysconfig.get_path("platlib"))')/"
	$(1)/bin/python -c 'import seccomp'
endef

$(VENV)/.seccomp: $(VENV)/.installed
	$(call link_seccomp,$(VENV))
	touch $@

deps:
	@sh .ci/apt-install $(RUNTIME_PACKAGES)

test-deps: deps
	@sh .ci/apt-install $(TEST_PACKAGES)

bench-deps: deps
	@sh .ci/apt-install $(BENCH_PACKAGES)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
