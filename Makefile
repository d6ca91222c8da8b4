# PICARD Node: the two commands of the README, and helpers.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
APT_PACKAGES = redis-server dcmtk orthanc dicom3tools openssl
# the viewer test (tests/viewer): Orthanc's DICOMweb plugin and a headless browser
VIEWER_APT_PACKAGES = orthanc-dicomweb chromium

.PHONY: demo test install test-deps viewer-deps test-viewer clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build of torch first: a bare "torch" requirement would pull a CUDA build
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,viewer]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/picard-node demo --out demo-out

test-deps:
	@missing=""; for p in $(APT_PACKAGES) $(VIEWER_APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

# the pinned OHIF viewer (npm pack @ohif/app, hash checked) under tests/viewer/.ohif/
viewer-deps: test-deps install
	$(PY) -m tests.viewer.ohif

test: viewer-deps
	$(PY) -m pytest -q

# the viewer test alone (about two minutes); screenshots in build/viewer-test/
test-viewer: viewer-deps
	$(PY) -m pytest -q tests/viewer

clean:
	rm -rf demo-out .pytest_cache build/viewer-test
