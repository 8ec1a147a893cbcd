#!/usr/bin/env bash
# Lint our Dockerfiles with hadolint (pinned in ci/tools-requirements.txt; settings in .hadolint.yaml,
# where every finding, down to style, fails). hadolint also runs ShellCheck on each RUN's shell code.
#   ci/lint-docker.sh [DOCKERFILE...]     default: every Dockerfile* in docker/ (DOCKER_DIR)
# A rule that does not fit is switched off in the Dockerfile itself, for the one instruction, with a
# comment that says why (`# hadolint ignore=DLxxxx`), never globally.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
DOCKER_DIR=$(realpath -m "${DOCKER_DIR:-$ROOT/docker}")

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(find "$DOCKER_DIR" -maxdepth 1 -type f -name 'Dockerfile*' ! -name '*.dockerignore' | sort)
  [ "${#files[@]}" -gt 0 ] || die "no Dockerfile* in $DOCKER_DIR"
fi
tools_bin=$("$ROOT/ci/tools.sh")
# --no-color: the findings go to logs. hadolint reads no other configuration (the file is given).
"$tools_bin/hadolint" --no-color --config "$ROOT/.hadolint.yaml" "${files[@]}" \
  || die "hadolint found problems in ${files[*]}"
log "hadolint $("$tools_bin/hadolint" --version | awk '{ print $NF }'): ${#files[@]} Dockerfile(s) clean"
