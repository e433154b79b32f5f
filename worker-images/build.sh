#!/usr/bin/env bash
# Builds the vtx runtime image without a container daemon and tests it (worker-images/README.md):
#   1. a Debian 12 base from `debootstrap --variant=minbase bookworm`, imported into podman
#      (once: no registry is reachable here);
#   2. `podman build --isolation=chroot` of worker-images/Dockerfile, with the host's Rust
#      toolchain, cargo registry and a target cache mounted into the build stage;
#   3. the image's filesystem, through a container's root mounted on the host: `vtx --help`
#      runs, every shared library resolves, no libavdevice, no compiler, a non-root user;
#   4. `vtx gateway`, `vtx scheduler` and `vtx worker` from the image (chroot into that root, as
#      uid 65532) on this machine's PostgreSQL, RabbitMQ and S3 server: a real clip is uploaded
#      (by the image's own `vtx upload`), its slices are encoded by the image's worker, and the
#      video is published.
# Root is needed (debootstrap, podman's storage, chroot). `podman run` is not used: this
# sandbox's cgroups refuse it. Usage: worker-images/build.sh [TAG]  (default localhost/vtx:latest)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
state="$root/.vtx/images"
tag="${1:-localhost/vtx:latest}"
base="localhost/vtx-base:bookworm"
mirror="${VTX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { printf '[image] %s\n' "$*" >&2; }
started=$SECONDS
mkdir -p "$state/target"
# Its tools, from Debian's packages.
for tool in podman debootstrap; do
  if ! command -v "$tool" >/dev/null; then
    log "installing $tool"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap >/dev/null
  fi
done

# 1. The base.
if ! podman image exists "$base"; then
  log "debootstrap bookworm (minbase) from $mirror"
  rm -rf "$state/rootfs"
  debootstrap --variant=minbase bookworm "$state/rootfs" "$mirror" >"$state/debootstrap.log" 2>&1
  tar -C "$state/rootfs" -c . | podman import --quiet - "$base" >/dev/null
  rm -rf "$state/rootfs"
fi

# 2. The image.
log "podman build --isolation=chroot -> $tag"
toolchain="$(rustc --print sysroot)"
registry="${CARGO_HOME:-$HOME/.cargo}/registry"
podman build --isolation=chroot --quiet \
  --build-arg BASE="$base" \
  --volume "$toolchain:/opt/rust:ro" \
  --volume "$registry:/usr/local/cargo/registry" \
  --volume "$state/target:/src/target" \
  -f "$root/worker-images/Dockerfile" -t "$tag" "$root" >"$state/build.log" 2>&1 \
  || { tail -40 "$state/build.log" >&2; exit 1; }
log "built in $((SECONDS - started)) s; size $(podman image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec)"

# 3. Its filesystem, from a container's root mounted here (writable: the test puts a clip in).
ctr="$(podman create --quiet "$tag")"
mnt="$(podman mount "$ctr")"
pids=()
prefix="img$(date +%s)$$"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount "$mnt/proc" 2>/dev/null || true
  umount "$mnt/dev" 2>/dev/null || true
  podman umount "$ctr" >/dev/null 2>&1 || true
  podman rm "$ctr" >/dev/null 2>&1 || true
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$prefix\." || true); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
fail() { echo "image check failed: $*" >&2; exit 1; }
[ "$(podman image inspect --format '{{.Config.User}}' "$tag")" = "65532:65532" ] || fail "not non-root"
chroot "$mnt" /usr/local/bin/vtx --help >/dev/null || fail "vtx --help"
missing="$(chroot "$mnt" /usr/bin/ldd /usr/local/bin/vtx | grep 'not found' || true)"
[ -z "$missing" ] || fail "unresolved libraries: $missing"
! ls "$mnt"/usr/lib/x86_64-linux-gnu/libavdevice* >/dev/null 2>&1 || fail "libavdevice is installed"
! [ -e "$mnt/usr/bin/cc" ] || fail "a compiler is installed"
log "filesystem: vtx --help runs, $(chroot "$mnt" /usr/bin/ldd /usr/local/bin/vtx | wc -l) libraries resolve, no libavdevice, no compiler, user 65532"

# 4. A real slice: every vtx process from the image, as its user, on this machine's services.
mount --bind /dev "$mnt/dev"
mount -t proc proc "$mnt/proc"
cp "$root/../shared/media/bikes.mp4" "$mnt/tmp/bikes.mp4"
chmod 644 "$mnt/tmp/bikes.mp4"
token="$(cat "$root/.vtx/service-token")"
in_image() { # name, vtx arguments...: runs `vtx ARGS` in the image; run with &, exec makes $! its pid
  local name="$1"; shift
  exec env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/tmp \
    VTX_QUEUE_PREFIX="$prefix" VTX_S3_PREFIX="$prefix/" VTX_SERVICE_TOKEN="$token" \
    VTX_LIVE_INGEST=false VTX_TIERS=fast VTX_HTTP_ADDR=127.0.0.1:0 \
    VTX_METRICS_ADDR="127.0.0.1:${metrics_port:-0}" \
    VTX_URL="${gateway_url:-}" \
    chroot --userspec=65532:65532 "$mnt" /usr/local/bin/vtx "$@"
}
in_image gateway gateway >"$state/gateway.out" 2>"$state/gateway.log" & pids+=($!)
in_image scheduler scheduler 2>"$state/scheduler.log" & pids+=($!)
# The worker's start, from exec to ready (/readyz 200): the part of a pod's start time that is
# vtx's own (scheduling and pulling the image come on top).
metrics_port=$((20000 + RANDOM % 20000))
worker_started=$(date +%s%N)
in_image worker worker 2>"$state/worker.log" & pids+=($!)
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null || fail "the worker never became ready"
log "worker ready $(( ($(date +%s%N) - worker_started) / 1000000 )) ms after exec"
metrics_port=0
for _ in $(seq 100); do
  gateway_url="$(sed -n 's/^vtx gateway on //p' "$state/gateway.out")"
  [ -n "$gateway_url" ] && break
  sleep 0.2
done
[ -n "$gateway_url" ] || fail "the gateway did not start: $(tail -5 "$state/gateway.log")"
video="$(in_image upload upload --no-resume --wait --wait-timeout 300 /tmp/bikes.mp4 2>"$state/upload.log" \
  | head -1)" || fail "upload: $(tail -5 "$state/upload.log")"
slices="$(psql -qtA "postgres://vtx:vtx@127.0.0.1:5432/vtx" -c \
  "SELECT count(*) FROM slices s JOIN jobs j ON j.id = s.job_id
   WHERE j.video_id = '$video' AND s.state = 'done' AND s.finished_by IS NOT NULL")"
[ "${slices:-0}" -ge 1 ] || fail "no slice of $video was encoded"
log "a real upload through the image: video $video published, $slices slices encoded by its worker"
log "done in $((SECONDS - started)) s"
