#!/usr/bin/env bash
# Run a serving image's entry point (`vllm serve "$@"`) as `docker run` would, with its user, working
# directory and environment: `docker run` where a docker engine answers, else buildah (chroot
# isolation, on the host's network: the server listens on the host's ports).
#   ci/docker-run.sh [--name NAME] [-v HOST:CTR[:ro]]... [-e NAME=VALUE]... IMAGE [ARG...]
# ARGs go to the entry point, e.g.
#   ci/docker-run.sh -v /models/m:/models/m:ro -e VLLM_SHARED_EXPERT_FUSION_REPLICAS=1 \
#       vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>-cpu /models/m --port 8000
# With buildah the working container (NAME, default vllm-sef-run-<pid>) is removed when the server
# exits or the script is stopped (SIGTERM/SIGINT); `buildah run NAME -- CMD` runs CMD beside the
# server meanwhile (the health check, say). With docker: --rm --network host (and --name NAME).
# SEF_IMAGE_ENGINE, DOCKER, BUILDAH_STORAGE_DRIVER as for ci/docker-build.sh.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=image-lib.sh
. "$ROOT/ci/image-lib.sh"

name=vllm-sef-run-$$
opts=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    -v|-e) opts+=("$1" "$2"); shift 2 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (usage: $0 [--name NAME] [-v HOST:CTR[:ro]]... [-e NAME=VALUE]... IMAGE [ARG...])" ;;
    *) break ;;
  esac
done
[ "$#" -gt 0 ] || die "usage: $0 [--name NAME] [-v HOST:CTR[:ro]]... [-e NAME=VALUE]... IMAGE [ARG...]"
image=$1
shift

if [ "$(engine)" = docker ]; then
  exec "$DOCKER" run --rm --network host --name "$name" "${opts[@]}" "$image" "$@"
fi

# buildah run takes the image's user, environment and working directory from the container's
# configuration, but not its entry point: read it.
ctr=$(bh from --pull=never --name "$name" "$image") || die "no image $image (make docker-cpu builds it)"
at_exit 'bh rm "$ctr" >/dev/null 2>&1'
mapfile -t entrypoint < <(bh inspect --type container --format '{{ range .Docker.Config.Entrypoint }}{{ . }}{{ println }}{{ end }}' "$ctr")
[ "${#entrypoint[@]}" -gt 0 ] || die "$image has no entry point"
run_opts=()
for ((i = 0; i < ${#opts[@]}; i += 2)); do
  case "${opts[$i]}" in
    -v) run_opts+=(--volume "${opts[$((i + 1))]}") ;;
    -e) run_opts+=(--env "${opts[$((i + 1))]}") ;;
  esac
done
# Not exec: the container is removed afterwards. SIGTERM/SIGINT are passed on to the server, which
# is waited for before the container goes.
bh run --isolation chroot "${run_opts[@]}" "$ctr" -- "${entrypoint[@]}" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM
trap 'kill -INT "$child" 2>/dev/null; wait "$child"; exit 130' INT
status=0
wait "$child" || status=$?
exit "$status"
