"""The project's text speaks of the project only.

README, docs, code, comments, docstrings, configs, scripts and tests must not cite things a reader of the
repository does not have: tracker references ("issue 9", "issues 8 and 9", "#12"), words from the process
that wrote them ("session", "this turn"), or a facts file that is not in the repository ("REFERENCE §1",
"REFERENCE.md"). Cite the paper (and its section or table), the data set, a docs page or a test instead.
A few legitimate uses (third-party API names) are allowed explicitly, line by line, in ``ALLOWED``.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ["README.md", "docs", "dfn", "experiments", "scripts", "tests", "train.py", "pyproject.toml"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".csv", ".json"}
THIS_FILE = Path(__file__).resolve()

# name -> pattern; each match is a violation unless its line contains an ALLOWED substring.
FORBIDDEN = {
    "issue number": re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE),
    # "#12"; not a colour ("#777777", "color: #222;", "'#999'"), an HTML entity ("&#38;") or a URL fragment
    "tracker reference": re.compile(r"(?<![\w&#/'\"])#\d{1,4}\b(?![\w;'\"-])"),
    "process word 'session'": re.compile(r"\bsessions?\b", re.IGNORECASE),
    "process word 'turn'": re.compile(r"\b(?:this|that|next|last|previous|earlier|a later|one) turn\b", re.IGNORECASE),
    "facts file not in the repository": re.compile(r"\bREFERENCE\b"),  # "REFERENCE §1", "REFERENCE.md"
}

# Substrings that make a line legitimate although it matches: third-party API names only.
ALLOWED = (
    "requests.Session",       # the requests library's class
    "InferenceSession",       # onnxruntime's class
    "tf.Session",             # TensorFlow 1's class
)


def project_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in candidates:
            if file.resolve() == THIS_FILE or "__pycache__" in file.parts or file.suffix not in SUFFIXES:
                continue
            files.append(file)
    return files


def violations(text: str) -> list[tuple[int, str, str]]:
    """(line number, rule name, matched text) for every forbidden match in ``text`` not on an allowed line."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if any(allowed in line for allowed in ALLOWED):
            continue
        for name, pattern in FORBIDDEN.items():
            for match in pattern.finditer(line):
                found.append((number, name, match.group(0)))
    return found


def test_the_rules_catch_what_they_are_for_and_nothing_else():
    bad = ("see issue 9 for why", "issues 8 and 9", "Issue 12's target", "fixed in #12.", "a session's run",
           "done in this turn", "(REFERENCE §1)", "see REFERENCE.md", "REFERENCE: any frames_in")
    for line in bad:
        assert violations(line), f"not caught: {line!r}"
    good = ("the paper (De Brabandere et al. 2016, Table 1)", "colour #777777 and #0072B2", "body { color: #222; }", "fill='#999'", "&#38; entity",
            "docs/paper.md#metric-conventions", "local_filter_reference(x, f)", "turn it off with --x false",
            "a known issue with unfold", "requests.Session() is wandb's transport", "# 1 thread")
    for line in good:
        assert not violations(line), f"false alarm: {line!r} -> {violations(line)}"


def test_no_tracker_or_process_words_in_the_project():
    files = project_files()
    assert len(files) > 50 and any(f.name == "README.md" for f in files)  # the scan reaches the project
    problems = []
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        for number, name, match in violations(text):
            problems.append(f"{file.relative_to(ROOT)}:{number}: {name}: {match!r}")
    assert not problems, ("the project's text must cite the paper, the data, a docs page or a test, not a "
                          f"tracker or the process ({len(problems)}):\n" + "\n".join(problems))
