# The README's two fresh-machine commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
# OpenCV's libraries and a virtual X server for --display; Chromium for the browser
# tests; GStreamer's webrtcbin (run by Debian's own python3) for interoperability, and its
# RTSP server (python3-gi, openh264enc in plugins-bad) for the test RTSP camera; Janus
# for the SFU tests; iproute2 and nftables for the two-host loss tests; PortAudio for
# --audio-out, and PulseAudio (a null sink, ALSA's pulse plugin, parec) to play into and
# record from without a sound card.
APT_PACKAGES := libgl1 libglib2.0-0 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libx11-xcb1 x11-utils xvfb \
	chromium janus coturn iproute2 nftables \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-libav gstreamer1.0-nice python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 \
	python3-gi gir1.2-gst-rtsp-server-1.0 systemd \
	libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins

.PHONY: setup system-deps demo test bench bench-net lint format clean

system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	else \
		echo "not root or no apt-get: make sure these are installed: $(APT_PACKAGES)"; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: system-deps $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"

# The main job on the fake camera: a sender, and a receiver recording a 5 s clip into
# out/. In a terminal the sender keeps serving its browser page until Ctrl-C.
export WAIT_READY := import sys, time, urllib.request\nfor _ in range(150):\n    try:\n        urllib.request.urlopen(sys.argv[1], timeout=1); sys.exit(0)\n    except OSError:\n        time.sleep(0.2)\nsys.exit("the sender did not start")
demo: setup
	@mkdir -p out
	@$(BIN)/webcam-sender --source testsrc --port $(PORT) & sender=$$!; \
	trap 'kill $$sender 2>/dev/null; wait $$sender' EXIT INT TERM; \
	$(BIN)/python -c "$$(printf "$$WAIT_READY")" http://127.0.0.1:$(PORT)/healthz || exit 1; \
	$(BIN)/webcam-receiver http://127.0.0.1:$(PORT) --duration 5 --record out/demo.mkv \
		--snapshots out/snapshots --snapshot-every 50 --stats-json out/demo-stats.json || exit 1; \
	echo "recorded out/demo.mkv, snapshots in out/snapshots, summary in out/demo-stats.json"; \
	if [ -t 0 ]; then echo "browser page: http://127.0.0.1:$(PORT)/ (Ctrl-C stops the sender)"; wait $$sender; fi

# mypy over sender/ receiver/ common/ (configured in pyproject.toml); each remaining
# `# type: ignore[code]` must say why, in a comment after it on the same line.
define typecheck
	$(BIN)/mypy
	@! grep -rnE --include='*.py' 'type: ignore\[[^]]*\] *$$' sender receiver common \
		|| { echo 'give each type: ignore its reason: "# type: ignore[code]  # why"'; exit 1; }
endef

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(typecheck)
	$(BIN)/python -m pytest

# Side by side against stock aiortc, 3 interleaved repetitions (about an hour): every
# figure to docs/performance.json, the tables made from it into docs/performance.md
# (between its bench:begin/end markers). Remake the tables alone:
#   python -m bench.run --from-json docs/performance.json --markdown docs/performance.md
bench: setup
	$(BIN)/python -m bench.run --json docs/performance.json --markdown docs/performance.md

# The same comparison across two network namespaces, under loss and behind narrow links
# (root, ip, nft and tc; otherwise it says why and skips): the table goes to docs/networks.md.
bench-net: setup
	@mkdir -p out
	$(BIN)/python -m bench.net --json out/bench-net.json --markdown docs/networks.md

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(typecheck)

format:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) out .pytest_cache
