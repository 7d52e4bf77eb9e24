"""docs/architecture.md's layout lists every folder and module of the package, and
nothing that does not exist."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")
MAX_LINES = 300


def documented(text: str) -> dict[str, set[str]]:
    """Folder -> modules of the fenced block under '## Layout': a line starting with a
    folder ('geom_jax/...') opens it, its module names follow, comma-separated, on it
    and on the indented lines after it."""
    section = text.split("\n## Layout\n", 1)[1]
    block = section.split("```\n", 2)[1]
    out, folder = {}, None
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            folder, _, line = line.partition(" ")
            assert folder.endswith("/") and folder not in out, folder
            out[folder] = set()
        out[folder] |= {n for n in re.split(r"[,\s]+", line) if n}
    return out


def package_layout(root: str = ROOT) -> dict[str, set[str]]:
    """Folder -> modules (without .py, __init__ left out) of every package folder."""
    out = {}
    for folder, dirs, names in os.walk(os.path.join(root, "geom_jax")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "__init__.py" not in names:
            continue
        rel = os.path.relpath(folder, root).replace(os.sep, "/") + "/"
        out[rel] = {n[:-3] for n in names if n.endswith(".py") and n != "__init__.py"}
    return out


def differences(doc: dict, real: dict) -> list[str]:
    problems = []
    for folder in sorted(set(doc) | set(real)):
        if folder not in real:
            problems.append(f"{folder}: listed, but no such package folder")
        elif folder not in doc:
            problems.append(f"{folder}: a package folder the layout does not list")
        else:
            problems += [
                f"{folder}{m}.py: listed, does not exist" for m in doc[folder] - real[folder]
            ]
            problems += [f"{folder}{m}.py: exists, not listed" for m in real[folder] - doc[folder]]
    return problems


def test_the_layout_is_the_package():
    text = open(DOC).read()
    assert len(text.splitlines()) <= MAX_LINES
    assert differences(documented(text), package_layout()) == []


def test_a_missing_or_stale_entry_is_found():
    """The checker itself: a module dropped from the doc, one listed that does not
    exist, and a folder that is not a package."""
    real = package_layout()
    doc = {k: set(v) for k, v in real.items()}
    doc["geom_jax/metrics/measures/"].discard("overlap")
    doc["geom_jax/run/"].add("kinds")
    doc["geom_jax/nowhere/"] = {"x"}
    assert differences(doc, real) == [
        "geom_jax/metrics/measures/overlap.py: exists, not listed",
        "geom_jax/nowhere/: listed, but no such package folder",
        "geom_jax/run/kinds.py: listed, does not exist",
    ]
