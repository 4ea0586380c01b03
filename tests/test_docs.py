"""The project's docs stand on their own: no citation of an outside file, and every `spec.md §N` citation resolves.

Docstrings and comments cite the numerical spec as `docs/spec.md §4.3`, `§2.1, §2.3`, `§4.3-§4.5` (or `§4.3-4.5`),
`§14.1` or `Appendix D`; each cited section must be a heading of docs/spec.md (`## 4. ...`, `### 4.3 ...`,
`## Appendix D. ...`). Every `§` in the scanned files counts as a citation, with or without the file name.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "spec.md"
SCANNED_DIRS = ("packages", "tests", "benchmarks", "scripts", "docs")
SCANNED_FILES = ("README.md",)
SUFFIXES = {".py", ".md", ".cpp", ".h", ".c", ".proto", ".toml", ".txt", ".sh", ".yaml", ".yml", ".json", ".cfg"}
SKIPPED_PARTS = {".venv", "__pycache__", ".cache", "node_modules", ".git"}

SECTION = r"(?:Appendix\s+[A-Z]|\d+(?:\.\d+)*)"
# "§4.3", "§ 4.3", "§Appendix D", and ranges "§4.3-4.5" / "§4.3-§4.5" / "§4.3–4.5" (both ends are checked).
SECTION_CITATION = re.compile(rf"§\s?(?P<first>{SECTION})(?:\s?[-–]\s?§?\s?(?P<last>{SECTION}))?")
# "spec.md Appendix D" / "spec.md §7, Appendix D": appendices cited without a §, on a line that names the spec.
APPENDIX_CITATION = re.compile(r"(?<!§)(?<!§ )\bAppendix\s+[A-Z]\b")
HEADING = re.compile(rf"^#{{2,4}}\s+(?P<section>{SECTION})\.?\s+\S")


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for top in SCANNED_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and not SKIPPED_PARTS & set(path.relative_to(ROOT).parts):
                files.append(path)
    return files


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def normalise(section: str) -> str:
    return re.sub(r"\s+", " ", section.strip())


def spec_sections() -> set[str]:
    return {normalise(m["section"]) for line in lines_of(SPEC) if (m := HEADING.match(line))}


def citations(line: str) -> list[str]:
    """Sections a line cites."""
    cited = []
    for m in SECTION_CITATION.finditer(line):
        cited.append(m["first"])
        if m["last"]:
            cited.append(m["last"])
    if "spec.md" in line or "§" in line:
        cited += [m.group(0) for m in APPENDIX_CITATION.finditer(line)]
    return [normalise(c) for c in cited]


def test_spec_exists_and_has_numbered_sections():
    sections = spec_sections()
    assert SPEC.is_file()
    assert {"1", "2.1", "3", "4.3", "7", "8.5", "14.1", "16", "Appendix D"} <= sections, sorted(sections)


def test_no_file_cites_the_outside_reference():
    offenders = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
                 for path in scanned_files() if path != Path(__file__).resolve()
                 for i, line in enumerate(lines_of(path), 1) if "reference.md" in line]
    assert not offenders, "files cite reference.md, which is not in the repository; cite docs/spec.md §N:\n" + \
        "\n".join(offenders)


def test_every_spec_citation_resolves():
    sections = spec_sections()
    missing, found = [], 0
    for path in scanned_files():
        if path == Path(__file__).resolve():
            continue
        for i, line in enumerate(lines_of(path), 1):
            if path == SPEC and HEADING.match(line):
                continue
            for section in citations(line):
                found += 1
                if section not in sections:
                    missing.append(f"{path.relative_to(ROOT)}:{i}: cites §{section}, which docs/spec.md lacks")
    assert found > 20, f"only {found} citations found: is the pattern broken?"
    assert not missing, "\n".join(missing)


def test_citation_pattern():
    assert citations("(docs/spec.md §4.3-4.8)") == ["4.3", "4.8"]
    assert citations("(docs/spec.md §4.3-§4.5): conv stem") == ["4.3", "4.5"]
    assert citations("(docs/spec.md §2.1, §2.3)") == ["2.1", "2.3"]
    assert citations("per docs/spec.md §7 steps 5-7") == ["7"]
    assert citations("(docs/spec.md §7, Appendix D)") == ["7", "Appendix D"]
    assert citations("(docs/spec.md Appendix D)") == ["Appendix D"]
    assert citations("(docs/spec.md §14.1 explicit)") == ["14.1"]
    assert citations("see the Appendix of a paper") == []
    assert normalise(HEADING.match("### 4.3 Encoder conv stem")["section"]) == "4.3"
    assert normalise(HEADING.match("## 16. Where it deviates")["section"]) == "16"
    assert normalise(HEADING.match("## Appendix D. Runtime algorithm")["section"]) == "Appendix D"
