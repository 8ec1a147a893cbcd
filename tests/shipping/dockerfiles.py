"""Reading our Dockerfiles and the Makefile, for tests/test_docker.py.

What counts as a build step. A RUN command is a *build step* when it makes what the image ships
from this repository's sources: fetching the pinned upstream artifacts, applying the series,
compiling, packing or building wheels, or installing from a source tree. Every build step must be
a `make` target (the commands users run, which the suite exercises); nothing else may do that
work: not ci/*.sh called directly, not setup.py, `pip wheel`, `python -m build`, `pip install .`
or `-e`, CMake, ninja, compilers, git, `wheel`, nor an ad-hoc download (curl/wget).

Everything else a RUN may do is one of the kinds of ALLOWED below, each for a stated reason:
setting up the system and the toolchain (apt-get, a venv, pinned third-party Python packages),
installing an already built wheel file, users and permissions, and checks (docker/verify_image.py,
`id`, `test`). A command of no known kind is an error too, so that a new command has to be
classified here (or made a make target) before a Dockerfile can use it.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# Commands that are not build steps, by kind: command name -> why it is allowed.
ALLOWED = {
    "apt-get": "set-up: system packages (install, update, clean only)",
    "rm": "housekeeping",
    "mkdir": "housekeeping",
    "ln": "housekeeping",
    "chown": "users and permissions",
    "chmod": "users and permissions",
    "chgrp": "users and permissions",
    "useradd": "users and permissions",
    "id": "check",
    "test": "check",
    "pip": "set-up or install: pinned packages, requirement files, wheel files; uninstalls by name"
    " (pip_problem)",
    "python3": "python3 -m venv, python3 -m pip (as pip), python3 docker/verify_image.py",
    "flashinfer": "set-up: `flashinfer download-kernels`, FlashInfer's precompiled kernels",
}
# Commands that do build work; with the reason given in the error.
FORBIDDEN = {
    "cmake": "compiles",
    "ninja": "compiles",
    "nvcc": "compiles",
    "gcc": "compiles",
    "g++": "compiles",
    "cc": "compiles",
    "c++": "compiles",
    "cargo": "compiles",
    "git": "fetches or patches sources",
    "patch": "patches sources",
    "quilt": "patches sources",
    "wheel": "packs wheels",
    "uv": "builds or installs outside the checked pip rules",
    "curl": "downloads outside the sha256-pinned fetch of make",
    "wget": "downloads outside the sha256-pinned fetch of make",
}
APT_SUBCOMMANDS = {"update", "install", "clean"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "\n"}


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their first line; continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = []
        current = raw
        while True:
            body = current.rstrip()
            if body.endswith("\\"):
                parts.append(body[:-1])
                # Comment lines inside a continued instruction are removed by Docker's parser.
                while i < len(lines) and lines[i].strip().startswith("#"):
                    i += 1
                if i >= len(lines):
                    break
                current = lines[i]
                i += 1
            else:
                parts.append(body)
                break
        joined = " ".join(p.strip() for p in parts)
        keyword, _, rest = joined.partition(" ")
        flags: dict[str, str] = {}
        rest = rest.strip()
        # Leading --flag=value options (RUN --mount=..., COPY --from=..., FROM --platform=...).
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            flags[name] = flags[name] + " " + value if name in flags else value
            rest = rest.strip()
        out.append(Instruction(start, keyword.upper(), rest, flags))
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each build stage (FROM to the next FROM)."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    """ARG name -> default (the last one declared wins); ARGs without a default are left out."""
    out = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            out[name.strip()] = value.strip().strip('"')
    return out


def mounts(ins: Instruction) -> list[dict[str, str]]:
    """The --mount options of a RUN, as dicts."""
    out = []
    for spec in ins.flags.get("mount", "").split():
        out.append(dict(kv.partition("=")[::2] for kv in spec.split(",")))
    return out


def simple_commands(ins: Instruction) -> list[list[str]]:
    """A RUN's simple commands (split at &&, ||, ;, |), leading VAR=value assignments dropped."""
    if ins.args.startswith("["):
        return [json.loads(ins.args)]
    lexer = shlex.shlex(ins.args, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    result = []
    for words in commands:
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            result.append(words)
    return result


def pip_problem(args: list[str]) -> str | None:
    """Why `pip ARGS` would be a build step (or an unchecked install), else None."""
    if args and args[0] == "uninstall":
        names = [w for w in args[1:] if w not in {"-y", "--yes", "-q", "--quiet"}]
        odd = [w for w in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", w)]
        return f"`pip uninstall {' '.join(odd)}`: distribution names only" if odd else None
    if not args or args[0] != "install":
        return (
            f"`pip {' '.join(args[:1])}` (only `pip install` and `pip uninstall` are allowed;"
            " `pip wheel` builds)"
        )
    takes_value = {"-r", "--requirement", "-c", "--constraint", "--index-url", "--extra-index-url"}
    no_value = {"--no-deps", "--no-cache-dir", "--upgrade", "-U", "--quiet", "-q"}
    words = args[1:]
    i = 0
    while i < len(words):
        word = words[i]
        if word in takes_value:
            i += 2
            continue
        if word in no_value or word.startswith("--root-user-action="):
            i += 1
            continue
        if word in {"-e", "--editable"}:
            return "`pip install -e` installs (and builds) a source tree"
        if word.startswith("-"):
            return f"pip option {word} is not one of the checked ones"
        if word.endswith(".whl"):
            pass  # an already built wheel file
        elif "/" in word or word.startswith(".") or not re.search(r"==\S", word):
            return f"`{word}`: pip installs pinned requirements (name==version) or .whl files only"
        i += 1
    return None


def make_targets(args: list[str | None]) -> list[str]:
    """The targets of `make ARGS` (options, their values and VAR=value dropped; None: unknown)."""
    targets = []
    skip = False
    for word in args:
        if skip:
            skip = False
        elif word in {"-C", "-f", "-I", "-o", "-W", "--directory", "--file", "--makefile"}:
            skip = True
        elif word is not None and not word.startswith("-") and "=" not in word:
            targets.append(word)
    return targets


def classify(words: list[str]) -> tuple[str, str]:
    """('make', target list) for a make command, ('ok', kind) for an allowed one, or
    ('error', reason) for build work outside make or a command of no known kind."""
    name = words[0]
    base = Path(name).name
    if base == "make":
        targets = make_targets(words[1:])
        if not targets:
            return "error", "`make` without a target (name the target)"
        return "make", " ".join(targets)
    ci_script = re.compile(r"(^|/)ci/[^/]+\.sh$")
    if ci_script.search(name) or (
        base in {"bash", "sh"} and any(ci_script.search(w) for w in words[1:])
    ):
        return "error", f"{name}: calls a ci/ script directly; use its make target"
    if any(w.endswith("setup.py") for w in words):
        return "error", "runs setup.py; use a make target"
    if base in FORBIDDEN:
        return "error", f"`{base}` {FORBIDDEN[base]}: a build step must be a make target"
    if base in {"pip", "pip3"}:
        problem = pip_problem(words[1:])
        return ("error", problem) if problem else ("ok", ALLOWED["pip"])
    if re.fullmatch(r"python3?(\.\d+)?", base):
        rest = words[1:]
        if rest[:2] == ["-m", "venv"]:
            return "ok", "set-up: a venv"
        if rest[:2] == ["-m", "pip"]:
            return classify(["pip", *rest[2:]])
        if rest[:2] == ["-m", "build"]:
            return "error", "`python -m build` builds a wheel; use a make target"
        if rest and Path(rest[0]).name == "verify_image.py":
            return "ok", "check: docker/verify_image.py"
        return "error", f"`{' '.join(words[:3])}`: not a known set-up or check"
    if base == "apt-get":
        sub = [w for w in words[1:] if not w.startswith("-")]
        if not sub or sub[0] not in APT_SUBCOMMANDS:
            return "error", f"`apt-get {' '.join(sub[:1])}` (only {sorted(APT_SUBCOMMANDS)})"
        return "ok", ALLOWED["apt-get"]
    if base == "flashinfer":
        if words[1:] == ["download-kernels"]:
            return "ok", ALLOWED["flashinfer"]
        return "error", f"`{' '.join(words)}`: only `flashinfer download-kernels` is set-up"
    if base in ALLOWED:
        return "ok", ALLOWED[base]
    return "error", f"`{name}` is of no known kind (make it a make target, or classify it here)"


@dataclass
class BuildSteps:
    make_targets: list[tuple[int, str]]
    errors: list[str]


def build_steps(text: str) -> BuildSteps:
    """The make targets a Dockerfile's RUNs call (with line numbers), and every RUN command that
    is build work outside make or of no known kind."""
    targets: list[tuple[int, str]] = []
    errors: list[str] = []
    for ins in parse_dockerfile(text):
        if ins.keyword != "RUN":
            continue
        try:
            commands = simple_commands(ins)
        except ValueError as e:
            errors.append(f"line {ins.line}: cannot read the RUN's shell code ({e})")
            continue
        for words in commands:
            kind, what = classify(words)
            if kind == "make":
                targets += [(ins.line, t) for t in what.split()]
            elif kind == "error":
                errors.append(f"line {ins.line}: {what}")
    return BuildSteps(targets, errors)


def makefile_targets(text: str) -> dict[str, list[str]]:
    """Explicit Makefile targets -> their recipe lines (targets listed as `a b: ...` each)."""
    recipes: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("\t"):
            for name in current:
                recipes[name].append(line.strip())
            continue
        m = re.match(r"^([A-Za-z0-9_./ -]+?)\s*:(?![=:])", line)
        if m and not line.startswith((".", "#")) and "=" not in line.split(":", 1)[0]:
            current = m.group(1).split()
            for name in current:
                recipes.setdefault(name, [])
        elif line.strip() and not line.startswith("#"):
            current = []
    return recipes


def recipe_scripts(recipe: list[str]) -> set[str]:
    """The ci/ scripts a recipe runs, by file name."""
    return {m.group(1) for line in recipe for m in re.finditer(r"\bci/([\w.-]+\.sh)\b", line)}


@dataclass(frozen=True)
class Run:
    module: str
    function: str
    kind: str  # "script" (run_script("x.sh")) or "make" (a ["make", ..., target] command)
    name: str


def constant_str(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def runs_in_tests(tests_dir: Path) -> list[Run]:
    """What our test modules run: run_script("<ci script>", ...) calls and literal make commands
    (a list or tuple of strings that starts with "make"), with the enclosing function."""
    found = []
    for path in sorted(tests_dir.rglob("*.py")):
        module = path.relative_to(tests_dir).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "run_script"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    found.append(Run(module, func.name, "script", node.args[0].value))
                if isinstance(node, ast.List | ast.Tuple):
                    words = [constant_str(e) for e in node.elts]
                    if words and words[0] == "make":
                        for target in make_targets(words[1:]):
                            found.append(Run(module, func.name, "make", target))
    return sorted(set(found), key=lambda r: (r.module, r.function, r.kind, r.name))
