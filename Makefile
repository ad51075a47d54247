# scipion-em-tomodrgn developer tasks. `make demo` and `make test` work on a
# fresh clone: both create the virtualenv .venv first.

SHELL  := /bin/bash
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Interpreter used to create the venv: python3.11, else python3.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
# torch==2.13.0 resolves to a local CPU wheel on the CI/dev machines; any other
# spec downloads a multi-GB CUDA build. GPU users bring their own torch.
TORCH_SPEC ?= torch==2.13.0

# Headless Scipion settings, all state kept in the git-ignored .scipion/.
SCIPION_DIR := $(CURDIR)/.scipion
SCIPION_ENV := MPLBACKEND=Agg \
	SCIPION_DOMAIN=pwem \
	SCIPION_NOTIFY=False \
	SCIPION_TEST_NOSYNC=1 \
	SCIPION_HOME=$(SCIPION_DIR) \
	SCIPION_USER_DATA=$(SCIPION_DIR)/data \
	SCIPION_TESTS=$(SCIPION_DIR)/tests \
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH

.PHONY: venv sysdeps test demo gui screenshots clean distclean

venv: $(STAMP)

$(STAMP): setup.py
	@test -n "$(PYTHON)" || { echo "No python3.11/python3 found" >&2; exit 1; }
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -e . pytest
	touch $(STAMP)

# Xvfb, the virtual screen of the viewer tests (Debian's package), installed when missing if this is root;
# without it those tests are skipped.
sysdeps:
	@command -v Xvfb >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing xvfb (virtual screen of the viewer tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb >/dev/null; \
	  else echo "Xvfb is not installed (apt-get install xvfb): the viewer tests will be skipped" >&2; fi; }

test: venv sysdeps
	mkdir -p $(SCIPION_DIR)/data $(SCIPION_DIR)/tests
	$(SCIPION_ENV) $(VPY) -m pytest -q tomodrgn_scipion/tests

# The main job on the built-in data set, as a Scipion workflow run without a screen: simulate Warp-style
# particle tilt series of the two-state phantom, create the Scipion project $(DEMO_PROJECT) and run
# import -> train VAE (a small network, a few epochs) -> analyze (with the clusters mapped back into the
# tomograms: ChimeraX scripts, from the simulator's volume-series star) -> select/export in it. The last line
# printed is the project's folder; `make gui` opens it in the Scipion GUI.
DEMO_PROJECT ?= tomodrgn_demo
demo: venv
	rm -rf demo
	MPLBACKEND=Agg $(VENV)/bin/tomodrgn-scipion simulate -o demo/data -n 200 --tilt-step 6 --seed 0
	mkdir -p $(SCIPION_DIR)/data
	$(SCIPION_ENV) $(VPY) -m tomodrgn_scipion.workflow run --project $(DEMO_PROJECT) --star demo/data/particles.star \
		--volume-star demo/data/particles_volumes.star --zdim 2 --epochs 8 --ksample 2 --clusters 0 --small

gui: venv
	$(SCIPION_ENV) $(VPY) -O -m pyworkflow.apps.pw_project $(DEMO_PROJECT)

# Screenshots of every viewer from the demo project (run `make demo` first), on a virtual screen, into
# docs/viewers/; needs Xvfb and ImageMagick's `import`.
screenshots: venv sysdeps
	@command -v import >/dev/null || { echo "ImageMagick's import is missing: apt-get install imagemagick" >&2; exit 1; }
	$(SCIPION_ENV) $(VPY) docs/screenshots.py --project $(DEMO_PROJECT)

clean:
	rm -rf .scipion demo build dist .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
