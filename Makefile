# Two commands on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build; on a GPU machine install a CUDA torch into the venv first (see README).
TORCH  ?= torch==2.13.0
LOCK   := requirements.lock

.PHONY: install lock quickstart test browser-test chaos-test docs bench models clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Everything installs from the lock (requirements.lock: every package at the version the test suite
# passed with), pip and setuptools included, and the package builds with the locked setuptools.
# torch first, pinned, so the package's unpinned `torch` requirement is already satisfied; a CUDA
# torch installed beforehand is kept (torch is the one package the lock leaves out).
$(VENV)/.installed: $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/python -m pip install -q --constraint $(LOCK) pip setuptools
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q --constraint $(LOCK) $(TORCH)
	$(BIN)/python -m pip install -q --constraint $(LOCK) --no-build-isolation -e '.[test,bench,docs]'
	$(BIN)/python -m pip check
	touch $@

install: $(VENV)/.installed

# The bundled quickstart study: Micro3Diff's n_h × steps against S2 error, L error and time.
quickstart: install
	$(BIN)/micro-doe run quickstart

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q

# What a reviewer sees in a real browser (headless Chromium: `apt-get install chromium`): the
# dashboard's trial page, the MLflow run it links to, and the trials view. CI runs it too
# (.ci/run installs Chromium when it can); elsewhere the test skips without Chromium.
browser-test: install
	$(BIN)/python -m pytest -q -rs tests/studies/test_review_uis.py

# A 20-trial study on a 3-node local Ray cluster whose worker nodes are killed and replaced every
# 30 s (a few minutes; prints its figures).
chaos-test: install
	MICRO_DOE_CHAOS=1 $(BIN)/python -m pytest -q -s tests/studies/test_chaos.py

# The docs site (mkdocs.yml) into site/; `$(BIN)/mkdocs serve` shows it on 127.0.0.1:8000 while you write.
docs: install
	$(BIN)/mkdocs build --strict

bench: install
	$(BIN)/python benchmarks/descriptors.py

# The shipped Micro3Diff bundles, made with the project's own commands (about 45 min each on
# one CPU core; `make -j2 models` trains both at once). They were trained on all their images,
# so each is tuned (`micro-doe tune`, its default budget) against fresh images of the same
# generator with another seed: images the network never saw.
MODELS := micro_doe/platform/models
DATA   := micro-doe-runs/data
# $(call train_micro3diff,NAME,STEPS[,more train options]): a bundle from all of $(DATA)/NAME.nc,
# one thread, continued from its checkpoint with RESUME=1; $(call tune_micro3diff,NAME[,more tune options]):
# its sampling defaults against $(DATA)/NAME-held-out.nc.
train_micro3diff = OMP_NUM_THREADS=1 $(BIN)/micro-doe train micro3diff --data $(DATA)/$(1).nc --out $(MODELS)/$(1) \
	$(3) --steps $(2) --seed 0 --held-out 0 --no-tune --overwrite $(if $(RESUME),--resume)
tune_micro3diff = $(BIN)/micro-doe tune $(MODELS)/$(1) --held-out-data $(DATA)/$(1)-held-out.nc $(2)
models: $(MODELS)/spheres-32/model.pt $(MODELS)/polycrystal-32/model.pt $(MODELS)/ternary-blend-32/model.pt \
	$(MODELS)/opv-32/model.pt $(MODELS)/opv-ternary-32/model.pt $(MODELS)/spheres-64/model.pt $(MODELS)/polycrystal-64/model.pt \
	$(MODELS)/opv-64/model.pt

# Case I at half the paper's scale (32² images, Ø ~ N(7.5, 2) voxels) so a 32³ volume holds many spheres.
$(MODELS)/spheres-32/model.pt: install
	$(BIN)/micro-doe data make spheres --shape 300 32 32 --mean-diameter 7.5 --sd-diameter 2 \
		--volume-fraction 0.2 --min-gap 0 --seed 0 --out $(DATA)/spheres-32.nc --overwrite
	$(call train_micro3diff,spheres-32,5000)
	$(BIN)/micro-doe data make spheres --shape 40 32 32 --mean-diameter 7.5 --sd-diameter 2 \
		--volume-fraction 0.2 --min-gap 0 --seed 1 --out $(DATA)/spheres-32-held-out.nc --overwrite
	$(call tune_micro3diff,spheres-32)

# Case II at the paper's grain sizes (6, 9, 12 px) in 32² images.
$(MODELS)/polycrystal-32/model.pt: install
	$(BIN)/micro-doe data make polycrystal --n-images 300 --size 32 --seed 0 --out $(DATA)/polycrystal-32.nc --overwrite
	$(call train_micro3diff,polycrystal-32,5000)
	$(BIN)/micro-doe data make polycrystal --n-images 40 --size 32 --seed 1 --out $(DATA)/polycrystal-32-held-out.nc --overwrite
	$(call tune_micro3diff,polycrystal-32)

# Three phases (acceptor, donor, mixed): z-slices of a 320×32×32 three-phase Cahn–Hilliard box
# (χ = 4.5, 300 steps, feature size ≈ 6 voxels), the paper's stated future work.
$(MODELS)/ternary-blend-32/model.pt: install
	$(BIN)/micro-doe data make cahn-hilliard-trajectory --shape 320 32 32 --phases 3 --steps 300 \
		--snapshot-every 300 --seed 0 --out $(DATA)/ternary-blend-32.nc --overwrite
	$(call train_micro3diff,ternary-blend-32,3500)
	$(BIN)/micro-doe data make cahn-hilliard-trajectory --shape 40 32 32 --phases 3 --steps 300 \
		--snapshot-every 300 --seed 1 --out $(DATA)/ternary-blend-32-held-out.nc --overwrite
	$(call tune_micro3diff,ternary-blend-32)

# The paper's scale (#30): case I (64² images, Ø ~ N(15, 4) voxels) and case II (64² polycrystal,
# grains of 6, 9 and 12 px). One U-Net level more than at 32² (1,2,2,2: an 8² bottleneck again),
# 15 000 steps in mixed precision (bf16 autocast: half the CPU time a step): at 5 000 steps
# spheres-64's card still read vf 0.234 against 0.200 and 2D S2 / L errors of 36 / 29 %
# (spheres-32: 8.5 / 4.2 %). spheres-64's first 5 000 steps ran in fp32, before --precision.
# Several CPU hours each on one core: the run stops cleanly on Ctrl-C or SIGTERM with its
# checkpoint ($(MODELS)/NAME.checkpoint.pt, outside the package's data) and `make RESUME=1 ...`
# continues it.
UNET_64 := --channel-mults 1,2,2,2
# Mixed precision only where the CPU has bf16 kernels (AVX-512, AMX, Arm bf16); on an AVX2-only
# CPU bf16 is emulated and a step takes 12× fp32's (docs/explanation/micro3diff.md), so fp32 there.
# A run continued with RESUME=1 may change precision between pieces.
TRAIN_PRECISION ?= $(shell $(BIN)/python -c "from micro_doe.platform.diffusion.precision import native_precisions; \
	print('bf16' if 'bf16' in native_precisions('cpu') else 'fp32')" 2>/dev/null || echo fp32)
# A 64³ volume costs 5× a 32³ one a pass: 12 settings of at most 300 passes (n_h 10 at S 25).
# A tuning study that stops continues where it stopped (`micro-doe tune` again); one carried to a
# new machine travels as its Optuna storage: cp $(MODELS)/NAME.tuning-optuna.db micro-doe-runs/optuna.db.
TUNE_64 := --tune-budget 12 --max-passes 300
$(MODELS)/spheres-64/model.pt: install
	$(BIN)/micro-doe data make spheres --shape 300 64 64 --mean-diameter 15 --sd-diameter 4 \
		--volume-fraction 0.2 --min-gap 0 --seed 0 --out $(DATA)/spheres-64.nc --overwrite
	$(call train_micro3diff,spheres-64,15000,$(UNET_64) --precision $(TRAIN_PRECISION))
	$(BIN)/micro-doe data make spheres --shape 40 64 64 --mean-diameter 15 --sd-diameter 4 \
		--volume-fraction 0.2 --min-gap 0 --seed 1 --out $(DATA)/spheres-64-held-out.nc --overwrite
	$(call tune_micro3diff,spheres-64,$(TUNE_64))

$(MODELS)/polycrystal-64/model.pt: install
	$(BIN)/micro-doe data make polycrystal --n-images 300 --size 64 --seed 0 --out $(DATA)/polycrystal-64.nc --overwrite
	$(call train_micro3diff,polycrystal-64,15000,$(UNET_64) --precision $(TRAIN_PRECISION))
	$(BIN)/micro-doe data make polycrystal --n-images 40 --size 64 --seed 1 --out $(DATA)/polycrystal-64-held-out.nc --overwrite
	$(call tune_micro3diff,polycrystal-64,$(TUNE_64))

# The conditional LDM: the default Cahn–Hilliard data set (17 φ × 9 χ, ≈ 3 min) and the default
# recipe (VAE 5000, feature predictor 4000, LDM 30000 steps; ≈ 60 min on 2 cores) with each label
# freed with p = 0.1 (0.25, the default, cost raw τ accuracy: README). The sampling defaults
# (DDIM, 50 steps, guidance and feature guidance) are then chosen by measurement: the
# benchmark's best raw setting on 50 validation targets (≈ 12 min), also written into the card.
$(MODELS)/opv-32/model.pt: install
	$(BIN)/micro-doe data make cahn-hilliard --seed 0 --out $(DATA)/opv-32.nc --overwrite
	$(BIN)/micro-doe train ldm --data $(DATA)/opv-32.nc --out $(MODELS)/opv-32 --label-dropout 0.1 --seed 0 \
		--overwrite $(if $(RESUME),--resume)
	$(BIN)/python benchmarks/ldm.py --model $(MODELS)/opv-32 --conditions 50 --variants w=2,fg=4 w=3,fg=6 w=4 \
		--recipe-checks 4 --no-images --update-card --update-defaults

# The LDM at 64³ (#30 D3): a smaller data set (9 φ × 9 χ, ≈ 13 min on one core) and the default
# recipe in mixed precision where the CPU has bf16 kernels (≈ 3.7 h on one core instead of 7.7; several
# sessions, continued with RESUME=1), then the same measured choice of sampling defaults. On an AVX2-only
# CPU (fp32) a VAE step took ≈ 8.6 CPU s (2026-12-08, the other core busy): its 5 000 steps alone ≈ 12 h.
# A piece stops with Ctrl-C or SIGTERM and writes its checkpoint (OUT.staging, committed between pieces).
$(MODELS)/opv-64/model.pt: install
	OMP_NUM_THREADS=1 $(BIN)/micro-doe data make cahn-hilliard --shape 64 64 64 --phis 0.3:0.7:9 --chis 2.6:4.2:9 \
		--seed 0 --out $(DATA)/opv-64.nc --overwrite
	OMP_NUM_THREADS=1 $(BIN)/micro-doe train ldm --data $(DATA)/opv-64.nc --out $(MODELS)/opv-64 --label-dropout 0.1 \
		--precision $(TRAIN_PRECISION) --seed 0 --overwrite $(if $(RESUME),--resume)
	$(BIN)/python benchmarks/ldm.py --model $(MODELS)/opv-64 --conditions 50 --variants w=2,fg=4 w=3,fg=6 w=4 \
		--recipe-checks 4 --no-images --update-card --update-defaults

# The paper's three-phase case: donor, acceptor and a mixed phase, conditioned on vf_donor,
# vf_mixed, τ_donor and τ_acceptor. Each trajectory draws its mixed-phase fraction φ_mixed from
# 0.22–0.4, so vf_mixed varies enough to be learnt (≈ 4 min + ≈ 90 min on 2 cores).
$(MODELS)/opv-ternary-32/model.pt: install
	$(BIN)/micro-doe data make cahn-hilliard --phases 3 --phi-mixed 0.22:0.4 --seed 0 \
		--out $(DATA)/opv-ternary-32.nc --overwrite
	$(BIN)/micro-doe train ldm --data $(DATA)/opv-ternary-32.nc --out $(MODELS)/opv-ternary-32 \
		--conditioning vf_donor,vf_mixed,tau_donor,tau_acceptor \
		--fp-outputs vf_donor,vf_mixed,tau_donor,tau_acceptor,interfacial_area,phi,chi,log_time,phi_mixed \
		--seed 0 --overwrite $(if $(RESUME),--resume)
	$(BIN)/python benchmarks/ldm.py --model $(MODELS)/opv-ternary-32 --conditions 25 --per-condition 2 \
		--variants w=4 w=2,fg=4 --max-candidates 32 --recipe-checks 2 --correct --no-images --update-card --update-defaults

# Refresh the lock on purpose: the newest release of every dependency within pyproject's ranges
# in a scratch venv, `pip check` and the whole test suite there, and only then the new lock
# (pip freeze --all, less torch, which each machine or image brings in its own build). The
# cluster extra is locked too, so the image (deploy/Dockerfile) installs from the same file.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip setuptools
	$(LOCK_VENV)/bin/python -m pip install -q $(TORCH)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade --no-build-isolation -e '.[test,bench,docs,cluster]'
	$(LOCK_VENV)/bin/python -m pip check
	$(LOCK_VENV)/bin/python -m pytest -q
	{ echo "# The lock: every package at the version the test suite passed with (pip freeze --all of"; \
	  echo "# a venv with '.[test,bench,docs,cluster]'), less torch, which each machine brings in its own build."; \
	  echo "# \`make install\`, CI and deploy/Dockerfile install with --constraint this file. Refresh: make lock"; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v -iE "^((torch|micro-doe|micro_doe)==|-e )"; \
	} > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) micro-doe-runs .pytest_cache
