# make demo  -- split the shared MobileNetV2 into 5 stages and run it as a local MQTT pipeline
# make test  -- lint and run the whole test suite
# Both create .venv and install what they need, including Debian's mosquitto (via apt-get when
# run as root or with password-less sudo; otherwise they print the command to run).

PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared/data
MODEL ?= $(SHARED)/models/mobilenet_v2_1.0_224_quant.tflite
LABELS ?= $(wildcard $(SHARED)/models/imagenet_labels.txt)
IMAGES ?= $(SHARED)/images
STAGES ?= 5
DEMO_DIR ?= demo-out
PYTEST_ARGS ?=

BIN := $(VENV)/bin
DEMO_APT := mosquitto
# + what the systemd extra builds against, what the security, systemd and metrics tests use
# (prometheus: promtool checks the metric names), and the camera tests' video maker (ffmpeg)
# and RTSP server (GStreamer's, run by the system python3)
TEST_APT := mosquitto mosquitto-clients openssl libsystemd-dev pkg-config gcc python3-dev \
	systemd python3-seccomp shellcheck prometheus \
	ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad

.PHONY: demo test lint deps-demo deps-test venv clean bench-cluster bench-heal deps-bench

demo: deps-demo $(VENV)/.demo-installed
	@if [ ! -f "$(MODEL)" ]; then \
	  echo "No model at $(MODEL) (../shared is absent)."; \
	  echo "Give your own: make demo MODEL=model.tflite LABELS=labels.txt IMAGES=photos/"; \
	  exit 2; fi
	$(BIN)/aiotedge-convert split "$(MODEL)" --stages $(STAGES) --out $(DEMO_DIR) \
	  $(if $(LABELS),--labels "$(LABELS)")
	$(BIN)/aiotedge-convert verify $(DEMO_DIR) --images "$(IMAGES)"
	$(BIN)/aiotedge run --manifest $(DEMO_DIR) --source "$(IMAGES)"

test: deps-test $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The reliability suite: real daemons and a real mosquitto under faults (about 1.5 hours, an
# hour of it the soak; `--only NAME` re-runs one row);
# writes docs/reliability.md. `make test` runs its fast variant (bench/tests/test_reliability.py).
reliability: deps-test $(VENV)/.test-installed
	$(BIN)/python -m bench.reliability

# The emulated Raspberry Pi cluster (root: cgroup CPU quotas and network namespaces; where they
# are not permitted it says why and skips): pipeline, replicas and the planner's plan on 1 to 5
# boards; then a stage hop against the raw broker, where a daemon's memory goes, and the time
# from `aiotedge-convert deploy` to the first prediction of the new release. Writes
# docs/cluster/ and sections of docs/benchmarks.md (about 45 minutes; on a quiet machine): the
# steady state (bench.cluster.steady: 60 s windows, the dispatch beside the dealing in turn)
# takes about 12 minutes a round.
# BENCH_CLUSTER_ARGS adds options, e.g. BENCH_CLUSTER_ARGS="--cpu 0.2 --link-mbps 100".
BENCH_APT := iproute2 ethtool
BENCH_CLUSTER_ARGS ?=
bench-cluster: deps-test deps-bench $(VENV)/.test-installed
	$(BIN)/python -m bench.cluster --model "$(MODEL)" --images "$(IMAGES)" --write-docs \
	  $(BENCH_CLUSTER_ARGS)
	$(BIN)/python -m bench.cluster.steady --model "$(MODEL)" --images "$(IMAGES)" --write-docs
	$(BIN)/python -m bench.hop --model "$(MODEL)" --images "$(IMAGES)" --write-docs
	$(BIN)/python -m bench.memory --model "$(MODEL)" --images "$(IMAGES)" --write-docs
	$(BIN)/python -m bench.cluster.deploy --model "$(MODEL)" --images "$(IMAGES)" --write-docs \
	  $(if $(LABELS),--labels "$(LABELS)")

# The SSD detector (docs/models.md) on the same boards: its replicas against the planner's plan
# on 1 to 5 boards, in a section of docs/benchmarks.md and docs/cluster/detection/ of its own
# (about 20 minutes on a busy machine).
DETECTION_MODEL ?= $(SHARED)/detection/coco_ssd_mobilenet_v1_1.0_quant.tflite
.PHONY: bench-cluster-detection
bench-cluster-detection: deps-test deps-bench $(VENV)/.test-installed
	$(BIN)/python -m bench.cluster --model "$(DETECTION_MODEL)" --images "$(IMAGES)" \
	  --strategies replicas,plan --rounds 2 --cpu 0.2 --write-docs

# The fleet heals itself (root, as bench-cluster; about 7 minutes): 5 emulated boards with a
# node each under a steady camera, a self-healing coordinator; two nodes SIGKILLed, a third's
# link cut for 20 s, the two started again. Writes docs/cluster/heal.json, the timeline plot
# docs/cluster/heal-timeline.png and sections of docs/benchmarks.md and docs/reliability.md.
bench-heal: deps-test deps-bench $(VENV)/.test-installed
	$(BIN)/python -m bench.cluster.heal --model "$(MODEL)" --images "$(IMAGES)" \
	  --labels "$(LABELS)" --write-docs

# arm64, as on a Raspberry Pi with the 64-bit OS: a Debian 12 arm64 root run by qemu-user
# (cached in /var/cache/aiotedge, or AIOTEDGE_ARM64_CACHE), the board installed in it as
# docs/deploy-pi-cluster.md says, then tests/test_arm64.py: the board-side tests in the root,
# an arm64 stage daemon, and pipelines mixing x86_64 and arm64 stages. As root; not in `make
# test`. The first run builds the root (about 20 minutes), later ones reuse it (about 5).
.PHONY: test-arm64
test-arm64: deps-test $(VENV)/.test-installed
	scripts/arm64-root.sh test $(BIN)/python $(PYTEST_ARGS)

# 32-bit ARM, as on a Raspberry Pi with the 32-bit OS: the same with a Debian 12 armhf root
# (cached beside the arm64 one), install-board.sh's 32-bit path (tflite-runtime, Debian's
# python3-* packages), then tests/test_armhf.py. As root; not in `make test`.
.PHONY: test-armhf
test-armhf: deps-test $(VENV)/.test-installed
	AIOTEDGE_ROOT_ARCH=armhf scripts/arm64-root.sh test $(BIN)/python $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

# Debian packages, installed when missing (apt-get as root or via password-less sudo).
deps-demo:
	@scripts/apt-ensure.sh $(DEMO_APT)

deps-test:
	@scripts/apt-ensure.sh $(TEST_APT)

deps-bench:
	@scripts/apt-ensure.sh $(BENCH_APT)

venv: $(BIN)/python

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "Could not create a virtual environment."; \
	  echo "Run: sudo apt-get install -y python3-venv   then run make again."; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test,converter,systemd,metrics,video,watch,status]"
	touch $@ $(VENV)/.demo-installed

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
