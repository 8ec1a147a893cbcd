"""A vLLM sdist, as ci/vllm-source.sh imports it, against the upstream commit it was made from.

  upstream_tree.py compare SDIST_REPO SDIST_REV UPSTREAM_REPO COMMIT OUT   report; manifest OUT
  upstream_tree.py verify SDIST_REPO SDIST_REV MANIFEST                      the import against it

"The same tree" means: every file of the sdist that upstream tracks at COMMIT has the same content
(the same git blob id). The sdist's other files are the ones setuptools generates (PKG-INFO,
setup.cfg, vllm.egg-info/, vllm/_version.py); upstream's files that the sdist leaves out are listed.
File modes are reported, not required to agree.

`compare` (needs both trees; ci/pin-base.sh runs it) prints the differences and writes the
manifest: the commit, the files of each side only, and the number of shared files with one sha256
over their "<blob id> <path>" lines. `verify` (needs only the sdist import: offline) recomputes that
digest from the import without the manifest's sdist-only files. Exit status 1: the trees differ.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

# A git tree entry: (mode, blob id).
Entry = tuple[str, str]


def tree(repo: str, rev: str) -> dict[str, Entry]:
    """Every file (blob, symlink) of rev's tree, by path."""
    out = subprocess.run(
        ["git", "-C", repo, "ls-tree", "-r", "-z", "--full-tree", f"{rev}^{{tree}}"],
        capture_output=True,
        check=True,
    ).stdout
    files = {}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, kind, oid = meta.decode().split()
        if kind == "blob":
            files[path.decode("utf-8", "surrogateescape")] = (mode, oid)
    return files


def digest(files: dict[str, Entry]) -> str:
    """sha256 over "<blob id> <path>\\n" of the files, in path order (modes left out)."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{files[path][1]} {path}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def compare(sdist_repo: str, sdist_rev: str, upstream_repo: str, commit: str, out: str) -> int:
    sdist, upstream = tree(sdist_repo, sdist_rev), tree(upstream_repo, commit)
    shared = sorted(sdist.keys() & upstream.keys())
    sdist_only = sorted(sdist.keys() - upstream.keys())
    upstream_only = sorted(upstream.keys() - sdist.keys())
    differ = [p for p in shared if sdist[p][1] != upstream[p][1]]
    modes = [p for p in shared if sdist[p][0] != upstream[p][0]]
    say = sys.stderr.write
    say(
        f"sdist: {len(sdist)} files; upstream {commit}: {len(upstream)} files; "
        f"{len(shared)} in both, {len(differ)} of them with other content\n"
    )
    say(f"only in the sdist ({len(sdist_only)}): {' '.join(sdist_only) or '-'}\n")
    say(f"only upstream ({len(upstream_only)}): {' '.join(upstream_only) or '-'}\n")
    for p in modes:
        say(f"mode differs: {p} (sdist {sdist[p][0]}, upstream {upstream[p][0]})\n")
    if differ:
        for p in differ:
            say(f"content differs: {p} (sdist {sdist[p][1]}, upstream {upstream[p][1]})\n")
        return 1
    lines = [
        "# The upstream commit of a vLLM base against its sdist (ci/upstream_tree.py; written",
        "# by ci/pin-base.sh, checked offline by tests/test_upstream.py): the files of both sides",
        "# have the same content; shared: their number, sha256 of their '<blob id> <path>' lines.",
        f"commit {commit}",
        f"shared {len(shared)} {digest({p: sdist[p] for p in shared})}",
        *(f"mode {p} {sdist[p][0]} {upstream[p][0]}" for p in modes),
        *(f"sdist-only {p}" for p in sdist_only),
        *(f"upstream-only {p}" for p in upstream_only),
    ]
    Path(out).write_text("\n".join(lines) + "\n")
    return 0


def read_manifest(path: str) -> dict[str, list[str]]:
    """The manifest's lines by keyword (the rest of each line)."""
    fields: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, rest = line.partition(" ")
            fields.setdefault(key, []).append(rest)
    return fields


def verify(sdist_repo: str, sdist_rev: str, manifest: str) -> int:
    fields = read_manifest(manifest)
    commit = fields["commit"][0]
    count, want = fields["shared"][0].split()
    sdist = tree(sdist_repo, sdist_rev)
    generated = set(fields.get("sdist-only", []))
    missing = sorted(generated - sdist.keys())
    shared = {p: e for p, e in sdist.items() if p not in generated}
    got = digest(shared)
    if missing or len(shared) != int(count) or got != want:
        sys.stderr.write(
            f"the sdist import {sdist_rev} is not upstream {commit} (manifest {manifest}): "
            f"{len(shared)} shared files (expected {count}), digest {got} (expected {want})"
            + (f", missing sdist files: {' '.join(missing)}" if missing else "")
            + "\n"
        )
        return 1
    sys.stderr.write(
        f"the sdist import {sdist_rev} matches upstream {commit}: {count} files identical, "
        f"{len(generated)} generated by the sdist build\n"
    )
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "compare":
        return compare(*argv[1:])
    if len(argv) == 4 and argv[0] == "verify":
        return verify(*argv[1:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
