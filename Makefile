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
APT_PACKAGES := mosquitto mosquitto-clients

.PHONY: demo test lint deps venv clean

demo: $(VENV)/.demo-installed deps
	@if [ ! -f "$(MODEL)" ]; then \
	  echo "No model at $(MODEL) (../shared is absent)."; \
	  echo "Give your own: make demo MODEL=model.tflite LABELS=labels.txt IMAGES=photos/"; \
	  exit 2; fi
	$(BIN)/aiotedge-convert split "$(MODEL)" --stages $(STAGES) --out $(DEMO_DIR) \
	  $(if $(LABELS),--labels "$(LABELS)")
	$(BIN)/aiotedge-convert verify $(DEMO_DIR) --images "$(IMAGES)"
	$(BIN)/aiotedge run --manifest $(DEMO_DIR) --images "$(IMAGES)"

test: $(VENV)/.test-installed deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

# Debian packages: installed when missing, with apt-get as root or via password-less sudo.
deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$(APT_PACKAGES)"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; \
	else echo "Missing Debian packages: $$missing"; \
	     echo "Run: sudo apt-get update && sudo apt-get install -y $$missing"; \
	     echo "then run make again."; exit 1; fi; \
	echo "Installing $$missing with apt-get"; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

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
	$(BIN)/python -m pip install -q -e ".[test,converter]"
	touch $@ $(VENV)/.demo-installed

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
