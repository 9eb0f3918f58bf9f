"""The docs (README.md, docs/*.md): every relative link resolves, and every shell command is run by a test or marked.

Links: every markdown link and image ``[text](target)`` / ``![alt](target)`` outside code must name an
existing file, relative to the page (``#anchor`` and ``?query`` stripped; ``http(s):``, ``mailto:`` and
pure ``#anchor`` links skipped).

Commands: in each fenced block whose info string is ``bash``, ``sh`` or ``console``, every command must
be covered by :data:`COVERED`, unless the block is marked ``<!-- gpu-only -->`` or ``<!-- cluster-only -->``
on the line before its opening fence or as its first line. The parsing is deliberately simple:

1. lines ending in ``\\`` are joined with the next; in ``console`` blocks only lines starting with ``$ ``
   are commands (the rest is output), in ``bash``/``sh`` blocks every line is;
2. a leading ``$ `` is dropped, and so is a comment: a line starting with ``#``, or `` #`` and what follows;
3. the line is split into segments at ``&&``, ``||`` and ``;``; each segment is split into words with
   :func:`shlex.split` (quotes removed);
4. leading environment assignments (``NAME=value``) are dropped from a segment; a segment that is then
   empty, or only activates an environment (``. PATH``, ``source PATH``) or exports variables
   (``export NAME=value``), is not a command;
5. the segment's words, joined by single spaces, must start with a key of :data:`COVERED` (the whole key,
   followed by a space or the end); the longest matching key wins.

:data:`COVERED` maps a command prefix to the files that run it, each with a string the file must contain
(checked too, so a renamed command or a deleted test fails here). The files are tests, or CI's script
``.ci/run`` for the set-up commands CI runs before the tests.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXEMPT = ("<!-- gpu-only -->", "<!-- cluster-only -->")
SHELLS = ("bash", "sh", "console")

#: command prefix -> {file that runs it (relative to the repository): a string that file contains}
COVERED: dict[str, dict[str, str]] = {
    "python3 -m venv": {".ci/run": "python3 -m venv .venv"},
    "bash requirements/install_cpu.sh": {".ci/run": "bash requirements/install_cpu.sh"},
    "pytest": {".ci/run": "pytest"},
    "recipes/rehearse.sh": {"tests/test_rehearsals.py": "rehearse.sh"},
    "recipes/evaluate.sh": {"tests/test_rehearsals.py": 'script="evaluate.sh"'},
    "python -m verl_erc.export": {"tests/test_rehearsals.py": 'script="evaluate.sh"', "tests/test_export.py": "main(["},
    "python -m verl_erc --check": {"tests/test_config.py": '"--check"'},
    "python -m verl_erc.laptop.demo": {"tests/test_cpu_demo.py": "verl_erc.laptop.demo"},
    "python -m verl_erc.compare": {"tests/test_compare.py": "verl_erc.compare", "tests/test_compare_seeds.py": "verl_erc.compare"},
    "python -m verl_erc.analyze": {"tests/test_analysis.py": "verl_erc.analyze"},
    "python -m verl_erc.data": {"tests/test_data.py": '"verl_erc.data"'},
    "slurm/submit.sh": {"tests/test_slurm.py": '"submit.sh"'},
    "slurm/submit.sh --check": {"tests/test_submit_check.py": '"--check"'},
    "python benchmarks/erc_noise_floor.py": {"tests/test_benchmark_smoke.py": '"erc_noise_floor.py"'},
    "python benchmarks/old_pass_cost.py": {"tests/test_benchmark_smoke.py": '"old_pass_cost.py"'},
    "chromium-headless-shell": {"tests/test_report_browser.py": "--screenshot="},
}

_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"(`+).*?\1")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def blocks(text: str):
    """(first line number, info string, lines, exempt) of each fenced block; and the text outside blocks."""
    lines = text.splitlines()
    found, outside, i = [], [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            outside.append(lines[i])
            i += 1
            continue
        fence, info, start = opening.group(1), opening.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        before = lines[start - 1].strip() if start > 0 else ""
        exempt = before in EXEMPT or (bool(body) and body[0].strip() in EXEMPT)
        found.append((start + 1, info, body, exempt))
        outside.append("")
    return found, "\n".join(outside)


def commands(info: str, body: list[str]) -> list[str]:
    """The command lines of a block (rules 1-2 of the module docstring)."""
    joined, pending = [], ""
    for line in body:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    if pending:
        joined.append(pending)
    out = []
    for line in joined:
        line = line.strip()
        if info == "console":
            if not line.startswith("$ "):
                continue
        if line.startswith("$ "):
            line = line[2:].strip()
        if line.startswith("#") or line in EXEMPT:
            continue
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def programs(line: str) -> list[str]:
    """The command segments of one command line, normalised (rules 3-4 of the module docstring)."""
    found = []
    for segment in re.split(r"&&|\|\||;", line):
        words = shlex.split(segment)
        while words and _ASSIGNMENT.match(words[0]):
            words.pop(0)
        if not words or words[0] in (".", "source") or (words[0] == "export" and all(map(_ASSIGNMENT.match, words[1:]))):
            continue
        found.append(" ".join(words))
    return found


def covering_key(program: str) -> str | None:
    """The longest key of COVERED that ``program`` starts with (rule 5), None if there is none."""
    keys = [key for key in COVERED if program == key or program.startswith(key + " ")]
    return max(keys, key=len) if keys else None


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        _, outside = blocks(page.read_text())
        for number, line in enumerate(outside.splitlines(), 1):
            for target in _LINK.findall(_INLINE_CODE.sub("", line)):
                if re.match(r"(https?|mailto):", target) or target.startswith("#"):
                    continue
                path = target.split("#", 1)[0].split("?", 1)[0]
                if not (page.parent / path).exists():
                    broken.append(f"{page.relative_to(ROOT)}:{number}: {target}")
    assert not broken, "links to files that do not exist:\n  " + "\n  ".join(broken)


def test_every_documented_command_is_run_by_a_test_or_marked():
    uncovered = []
    for page in PAGES:
        found, _ = blocks(page.read_text())
        for number, info, body, exempt in found:
            if info not in SHELLS or exempt:
                continue
            for line in commands(info, body):
                uncovered += [f"{page.relative_to(ROOT)}:{number}: {program}"
                              for program in programs(line) if covering_key(program) is None]
    assert not uncovered, (
        "commands in the docs that no test runs (add the command's prefix to COVERED in tests/test_docs.py with the "
        "test that runs it, or mark its block <!-- gpu-only --> / <!-- cluster-only -->):\n  " + "\n  ".join(uncovered)
    )


def test_each_covering_file_exists_and_runs_the_command():
    wrong = []
    for key, files in COVERED.items():
        for name, needle in files.items():
            path = ROOT / name
            if not path.is_file():
                wrong.append(f"{key!r}: {name} does not exist")
            elif needle not in path.read_text():
                wrong.append(f"{key!r}: {name} does not contain {needle!r}")
    assert not wrong, "COVERED names files that do not run its commands:\n  " + "\n  ".join(wrong)


def test_the_parser_reads_prefixes_assignments_and_markers():
    line = "python3 -m venv .venv && . .venv/bin/activate && FOO=1 bash requirements/install_cpu.sh && recipes/rehearse.sh x"
    assert programs(line) == ["python3 -m venv .venv", "bash requirements/install_cpu.sh", "recipes/rehearse.sh x"]
    assert programs("export A=1 B=2") == [] and programs('pytest -m "not cpu_e2e"') == ["pytest -m not cpu_e2e"]
    lines = commands("console", ["$ pytest -q  # quiet", "1 passed", "$ recipes/rehearse.sh a \\", "  b"])
    assert [program for line in lines for program in programs(line)] == ["pytest -q", "recipes/rehearse.sh a b"]
    assert covering_key("python -m verl_erc.compare a --out b") == "python -m verl_erc.compare"
    assert covering_key("python -m verl_erc.comparex") is None and covering_key("python -m verl_erc --check") is not None
    found, _ = blocks("<!-- gpu-only -->\n```bash\nnvidia-smi\n```\n```sh\n<!-- cluster-only -->\nsinfo\n```\n```bash\nls\n```\n")
    assert [(info, exempt) for _, info, _, exempt in found] == [("bash", True), ("sh", True), ("bash", False)]


def test_every_module_the_scripts_and_docs_run_exists_and_runs_as_a_program():
    """``python -m verl_erc.X`` in a script or a page must name a module with a ``__main__`` guard (or a package with
    ``__main__.py``): a moved module otherwise runs as nothing and exits 0 (a Slurm job once requeued on that)."""
    scripts = [*ROOT.glob("slurm/*"), *ROOT.glob("recipes/*.sh"), *ROOT.glob("requirements/*.sh"),
               *ROOT.glob("benchmarks/*.sh"), ROOT / ".ci" / "run", *PAGES]
    named = {(module, script.relative_to(ROOT)) for script in scripts if script.is_file()
             for module in re.findall(r"-m (verl_erc(?:\.\w+)*)", script.read_text())}
    assert {module for module, _ in named} >= {"verl_erc", "verl_erc.recipes", "verl_erc.cluster.requeue"}
    wrong = []
    for module, script in sorted(named):
        path = ROOT.joinpath(*module.split("."))
        if (path / "__main__.py").is_file():
            continue
        source = path.with_suffix(".py")
        if not source.is_file() or 'if __name__ == "__main__":' not in source.read_text():
            wrong.append(f"{script}: python -m {module}")
    assert not wrong, "modules that do not exist or do nothing when run:\n  " + "\n  ".join(wrong)
