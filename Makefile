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

.PHONY: venv test demo clean distclean

venv: $(STAMP)

$(STAMP): setup.py
	@test -n "$(PYTHON)" || { echo "No python3.11/python3 found" >&2; exit 1; }
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -e . pytest
	touch $(STAMP)

test: venv
	mkdir -p $(SCIPION_DIR)/data $(SCIPION_DIR)/tests
	$(SCIPION_ENV) $(VPY) -m pytest -q tomodrgn_scipion/tests

# The main job on the built-in data set: simulate Warp-style tilt series of the two-state phantom,
# back-project them (protein-light data: the default contrast inversion applies), train the VAE for a
# few epochs, render the volume at the origin of the latent space and analyse the latent space.
demo: venv
	rm -rf demo/train_vae demo/volumes demo/analyze
	MPLBACKEND=Agg $(VENV)/bin/tomodrgn-scipion simulate -o demo/data --seed 0
	MPLBACKEND=Agg $(VENV)/bin/tomodrgn-scipion backproject demo/data/particles.star -o demo/backproject/map.mrc
	MPLBACKEND=Agg $(VENV)/bin/tomodrgn-scipion train_vae demo/data/particles.star -o demo/train_vae --zdim 2 -n 2 --seed 0
	MPLBACKEND=Agg $(VENV)/bin/tomodrgn-scipion eval_vol -w demo/train_vae/weights.pt -c demo/train_vae/config.json -z 0 0 -o demo/volumes
	MPLBACKEND=Agg $(VENV)/bin/tomodrgn-scipion analyze demo/train_vae --ksample 4 -o demo/analyze
	@echo "demo finished: data in $(CURDIR)/demo/data, maps in $(CURDIR)/demo/backproject, model and z in $(CURDIR)/demo/train_vae, volume in $(CURDIR)/demo/volumes, analysis in $(CURDIR)/demo/analyze"

clean:
	rm -rf .scipion demo build dist .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
