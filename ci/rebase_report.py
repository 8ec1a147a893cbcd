"""Describe the conflicts of a stopped ``git am -3`` in Markdown (used by ci/rebase.sh).

    python3 ci/rebase_report.py REPO PATCH INDEX TOTAL

For each unmerged file of REPO: the kind of conflict, and for each region with conflict markers its
line range in the merged file, the hunk header of ``git diff`` (combined diff: the ranges in the
new base, in the patched old file, and in the merged file) and the hunk(s) of PATCH whose new side
overlaps it, then the conflict hunk itself. Prints to stdout.
"""

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_HUNK_LINES = 60
# `git status --porcelain` codes of unmerged paths.
KINDS = {
    "UU": "both modified",
    "AA": "both added",
    "DU": "deleted upstream, modified by the patch",
    "UD": "modified upstream, deleted by the patch",
    "AU": "added upstream",
    "UA": "added by the patch",
    "DD": "both deleted",
}
PATCH_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
CC_HUNK = re.compile(r"^@@@ -(\d+)(?:,(\d+))? -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@@(.*)$")


@dataclass
class PatchHunk:
    header: str
    new_start: int
    new_len: int


def git(repo: str, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, "-c", "core.quotePath=false", *args],
        capture_output=True,
        text=True,
        check=False,
    ).stdout


def patch_hunks(patch: Path) -> dict[str, list[PatchHunk]]:
    """The hunks of each file of a patch (by its b/ path)."""
    hunks: dict[str, list[PatchHunk]] = {}
    current = None
    for line in patch.read_text(errors="replace").splitlines():
        if line.startswith("diff --git "):
            current = line.split(" b/", 1)[-1]
            hunks.setdefault(current, [])
        elif current is not None and (m := PATCH_HUNK.match(line)):
            new_len = int(m.group(4)) if m.group(4) is not None else 1
            hunks[current].append(PatchHunk(line, int(m.group(3)), new_len))
    return hunks


def overlaps(start: int, length: int, other_start: int, other_length: int) -> bool:
    return start < other_start + max(other_length, 1) and other_start < start + max(length, 1)


def conflict_hunks(repo: str, path: str) -> list[tuple[str, int, int, int, int, list[str]]]:
    """(header, theirs start, theirs length, first, last marker line in the merged file, lines) of
    every combined-diff hunk that holds conflict markers."""
    out = []
    lines = git(repo, "diff", "--cc", "--", path).splitlines()
    i = 0
    while i < len(lines):
        m = CC_HUNK.match(lines[i])
        if not m:
            i += 1
            continue
        header = lines[i]
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith("@@@"):
            body.append(lines[i])
            i += 1
        merged_line = int(m.group(5))
        first = last = 0
        for line in body:
            prefix, text = line[:2], line[2:]
            if "-" in prefix:
                continue  # not in the merged file
            if text.startswith("<<<<<<<") and not first:
                first = merged_line
            if text.startswith(">>>>>>>"):
                last = merged_line
            merged_line += 1
        if first:
            theirs_len = int(m.group(4)) if m.group(4) is not None else 1
            out.append((header, int(m.group(3)), theirs_len, first, last, body))
    return out


def main() -> int:
    repo, patch, index, total = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    status = git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()
    unmerged = [(line[:2], line[3:]) for line in status if line[:2] in KINDS]
    merged = [line[3:] for line in status if line[:2] not in KINDS and line[0] != " "]
    hunks = patch_hunks(patch)
    print(f"## {patch.name} (patch {index} of {total})\n")
    if not unmerged:
        print("`git am -3` stopped without unmerged files: the patch could not be merged at all.")
        return 0
    print("Conflicting files: " + ", ".join(f"`{p}`" for _, p in unmerged))
    if merged:
        print("\nMerged cleanly: " + ", ".join(f"`{p}`" for p in merged))
    for code, path in unmerged:
        print(f"\n### `{path}` ({KINDS[code]})\n")
        regions = conflict_hunks(repo, path)
        if not regions:
            print("- no conflict markers: the file as a whole conflicts (see its kind above)")
            for h in hunks.get(path, []):
                print(f"- patch hunk `{h.header}`")
            continue
        for header, theirs_start, theirs_len, first, last, body in regions:
            mine = [
                h.header
                for h in hunks.get(path, [])
                if overlaps(h.new_start, h.new_len, theirs_start, theirs_len)
            ]
            where = ", ".join(f"`{h}`" for h in mine) or "(no hunk of the patch overlaps)"
            print(f"- conflict at lines {first}-{last} of the merged file,")
            print(f"  `git diff` hunk `{header}`;")
            print(f"  patch hunk: {where}")
            shown = body[:MAX_HUNK_LINES]
            more = len(body) - len(shown)
            print("\n```diff\n" + header + "\n" + "\n".join(shown))
            if more:
                print(f"... ({more} more lines)")
            print("```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
