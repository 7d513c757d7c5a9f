#!/usr/bin/env bash
# Install what the integration tests need:
#   - Debian orthanc + orthanc-dicomweb: tests/test_pacs_orthanc.py starts a real Orthanc with the
#     DICOMweb plugin on loopback;
#   - Debian chromium: tests/test_app_e2e.py drives the web app in headless Chromium through
#     Playwright (the `test` extra of pyproject.toml), pointed at /usr/bin/chromium;
#     `playwright install`, which downloads its own browsers, is never run;
#   - .venv-reference: the reference implementation the weight-import tests compare against
#     (tests/test_reference_weights.py): the `yolov5` 7.0.14 package from PyPI in a virtual
#     environment of its own (it sees this Python's torch through --system-site-packages, and
#     its own dependencies stay out of the project's environment);
#   - .venv-paddle: the PaddleDetection reference for the .pdparams import tests
#     (tests/test_reference_paddle.py): paddlepaddle 3.3.1 and paddledet 2.6.0 from PyPI in a
#     virtual environment of its own, without the system site packages (paddle needs its own
#     numpy < 1.24).
# Idempotent and non-interactive: packages already installed are skipped; the package lists are
# refreshed only when something is missing.
#
# No service is left enabled at boot or running. The Debian orthanc package registers an
# Orthanc service (systemd unit and SysV init script), enables it and starts it on install. The
# tests do not use it: tests/orthanc.py starts its own Orthanc on free loopback ports, with
# authentication on and a temporary storage folder, and stops it at the end of the session.
# So during the install a temporary policy-rc.d keeps the service from starting (unless the
# machine already has a policy-rc.d of its own), and on every run, whether or not something was
# installed, the service is disabled at boot and stopped if it runs. This works with systemd
# running and in containers without it.
#
# Usage: scripts/install-test-deps.sh        (as root, or with sudo available)
set -euo pipefail

PACKAGES=(orthanc orthanc-dicomweb chromium)
SERVICE=orthanc
POLICY=/usr/sbin/policy-rc.d
POLICY_MARK="# lumbardx install-test-deps: temporary, removed when the script ends"

SUDO=""
need_root() {  # $1: what needs root
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
        return 0
    fi
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "error: need root (or sudo) to $1" >&2
        exit 1
    fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

systemd_running() {
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# --- install what is missing, without starting any service --------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    if installed "$pkg"; then
        echo "already installed: $pkg"
    else
        missing+=("$pkg")
    fi
done

remove_our_policy() {
    if [ -f "$POLICY" ] && grep -qF "$POLICY_MARK" "$POLICY"; then
        $SUDO rm -f "$POLICY"
    fi
}

if [ "${#missing[@]}" -eq 0 ]; then
    echo "all Debian test packages are installed"
    if [ -f "$POLICY" ] && grep -qF "$POLICY_MARK" "$POLICY"; then
        need_root "remove the policy-rc.d left by an interrupted run"
        remove_our_policy
    fi
else
    need_root "install: ${missing[*]}"
    # A policy-rc.d left by an interrupted earlier run is ours: it goes at the end like a new one.
    if [ ! -e "$POLICY" ]; then
        # exit 101: "action forbidden"; invoke-rc.d and deb-systemd-invoke then start nothing.
        printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_MARK" | $SUDO tee "$POLICY" >/dev/null
        $SUDO chmod 755 "$POLICY"
    fi
    trap remove_our_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    echo "installing: ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    remove_our_policy
    trap - EXIT
fi

# --- leave no Orthanc service enabled at boot or running (every run) ----------------------------
PIDFILE=/run/orthanc.pid  # the init script's pid file

service_enabled() {
    # systemd links (deb-systemd-helper creates them even where systemd does not run) and SysV
    # start links (update-rc.d defaults); `update-rc.d disable` turns S links into K links.
    compgen -G "/etc/systemd/system/*.wants/$SERVICE.service" >/dev/null \
        || compgen -G "/etc/rc[2-5].d/S[0-9][0-9]$SERVICE" >/dev/null
}

service_running() {
    if systemd_running; then
        systemctl is-active --quiet "$SERVICE.service"
    else
        # The init script's instance only (its pid file), never an Orthanc started by the tests.
        local pid
        pid=$(cat "$PIDFILE" 2>/dev/null || true)
        [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = Orthanc ]
    fi
}

if installed orthanc && { service_enabled || service_running; }; then
    need_root "disable and stop the $SERVICE service"
    if systemd_running; then
        $SUDO systemctl disable --now "$SERVICE.service"
    else
        $SUDO rm -f /etc/systemd/system/*.wants/"$SERVICE.service"
        if [ -x "/etc/init.d/$SERVICE" ] && command -v update-rc.d >/dev/null 2>&1; then
            $SUDO update-rc.d "$SERVICE" disable >/dev/null
        fi
        if service_running; then
            $SUDO start-stop-daemon --stop --quiet --oknodo --retry=TERM/30/KILL/5 \
                --pidfile "$PIDFILE" --exec /usr/sbin/Orthanc
            $SUDO rm -f "$PIDFILE"
        fi
    fi
    if service_enabled || service_running; then
        echo "error: the $SERVICE service is still enabled at boot or running" >&2
        exit 1
    fi
    echo "$SERVICE service disabled at boot and stopped (the tests start their own Orthanc)"
elif installed orthanc; then
    echo "$SERVICE service: not enabled at boot, not running"
fi
# --- the reference implementation for the weight-import tests -----------------------------------
REFERENCE_VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv-reference"
if [ -x "$REFERENCE_VENV/bin/python" ] && "$REFERENCE_VENV/bin/python" -c "import yolov5.models.yolo" 2>/dev/null; then
    echo "already made: $REFERENCE_VENV (yolov5 7.0.14)"
else
    python3 -m venv --system-site-packages "$REFERENCE_VENV"
    "$REFERENCE_VENV/bin/python" -m pip install --quiet --no-deps "yolov5==7.0.14" ultralytics
    "$REFERENCE_VENV/bin/python" -m pip install --quiet psutil tqdm seaborn \
        opencv-python-headless "setuptools<70"
    "$REFERENCE_VENV/bin/python" -c "import yolov5.models.yolo"
    echo "made: $REFERENCE_VENV (yolov5 7.0.14)"
fi
# --- the PaddleDetection reference for the .pdparams import tests ---------------------------------
PADDLE_VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv-paddle"
paddle_ready() {
    "$PADDLE_VENV/bin/python" -c "import paddle, ppdet.modeling" >/dev/null 2>&1
}
if [ -x "$PADDLE_VENV/bin/python" ] && paddle_ready; then
    echo "already made: $PADDLE_VENV (paddlepaddle 3.3.1, paddledet 2.6.0)"
else
    python3 -m venv "$PADDLE_VENV"
    "$PADDLE_VENV/bin/python" -m pip install --quiet "paddlepaddle==3.3.1" "paddledet==2.6.0" \
        "numpy<1.24" scikit-learn
    if ! paddle_ready; then
        echo "error: $PADDLE_VENV cannot import paddle and ppdet" >&2
        exit 1
    fi
    echo "made: $PADDLE_VENV (paddlepaddle 3.3.1, paddledet 2.6.0)"
fi
echo "done"
