"""The figures the documents quote from the shipped model are the ones its manifest records.

A table whose header has a `recorded as` column is a table of recorded figures: each row names, in that column, a path
into artifacts/default/manifest.json (`metrics.sample_accuracy`; `{a,b}` expands as in bash, one path per value), and
states the figure in the column before it (`99.4%`, `21.2`, `99.3 / 98.0%`: values split on ` / `, a `%` on the last
one applies to all). A stated figure must be the recorded one rounded to the decimals shown (a percentage: times 100).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MANIFEST = ROOT / "artifacts" / "default" / "manifest.json"
KEY_COLUMN = "recorded as"
NUMBER = re.compile(r"^-?\d[\d,]*(\.\d+)?$")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def expand(path: str) -> list[str]:
    """`a.{b,c}.d` -> [`a.b.d`, `a.c.d`] (one brace group)."""
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [path[: m.start()] + part + path[m.end() :] for part in m[1].split(",")]


def stated_values(cell: str) -> list[tuple[str, bool]]:
    """'**99.3 / 98.0%**' -> [('99.3', True), ('98.0', True)]: each number stated, and whether it is a percentage."""
    text = cell.replace("*", "").strip()
    percent = text.endswith("%")
    parts = [p.strip().rstrip("%").strip() for p in text.split(" / ")]
    return [(p, percent) for p in parts]


def recorded_rows(doc: Path) -> list[tuple[int, str, str]]:
    """(line number, stated cell, key cell) of every row of every recorded-figures table in `doc`."""
    rows, key_at = [], None
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if not line.startswith("|"):
            key_at = None
            continue
        row = cells(line)
        if key_at is None:
            key_at = row.index(KEY_COLUMN) if KEY_COLUMN in row else -1
            continue
        if key_at < 1 or set(line) <= set("|-: "):
            continue
        rows.append((number, row[key_at - 1], row[key_at].strip("`")))
    return rows


def lookup(manifest: dict[str, Any], path: str) -> Any:
    value: Any = manifest
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def mismatches(doc: Path, manifest: dict[str, Any]) -> list[str]:
    """Each stated figure of `doc` that is not its recorded one, as 'doc:line: path: stated X, recorded Y'."""
    found = []
    for line, stated, key in recorded_rows(doc):
        where = f"{doc.name}:{line}"
        paths, values = expand(key), stated_values(stated)
        if len(paths) != len(values):
            found.append(f"{where}: {len(values)} figures stated for {len(paths)} paths ({key})")
            continue
        for path, (text, percent) in zip(paths, values, strict=True):
            if not NUMBER.match(text):
                found.append(f"{where}: {path}: {text!r} is not a number")
                continue
            try:
                recorded = float(lookup(manifest, path))
            except (KeyError, TypeError, ValueError):
                found.append(f"{where}: {path}: not a number in the manifest")
                continue
            decimals = len(text.partition(".")[2])
            shown = recorded * 100 if percent else recorded
            if abs(shown - float(text.replace(",", ""))) > 0.5 * 10**-decimals + 1e-9:
                found.append(f"{where}: {path}: stated {text}{'%' if percent else ''}, recorded {recorded!r}")
    return found


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())


def test_quality_opens_with_a_table_of_recorded_figures() -> None:
    doc = ROOT / "docs" / "quality.md"
    text = doc.read_text()
    first_table = text[text.index("\n|") :].splitlines()[1]
    assert KEY_COLUMN in cells(first_table), "docs/quality.md's first table is not its recorded figures"
    assert len(recorded_rows(doc)) >= 20


def test_every_figure_the_documents_quote_from_the_shipped_manifest_is_the_recorded_one(
    manifest: dict[str, Any],
) -> None:
    found = [m for doc in DOCS for m in mismatches(doc, manifest)]
    assert not found, "documents disagree with artifacts/default/manifest.json:\n" + "\n".join(found)


def test_a_figure_that_differs_from_the_record_is_found(tmp_path: Path, manifest: dict[str, Any]) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "| figure | value | recorded as |\n|---|---|---|\n"
        "| samples | 99.5% | `metrics.sample_accuracy` |\n"
        "| ratio | 1.15 | `metrics.frechet_ratio` |\n"
        "| sets | 99.3 / 98.0 / 98.7 / 99.1% | `metrics.outside.{drawn,typed,scanned,photographed}.encode_accuracy` |\n"
        "| gone | 1 | `metrics.no_such_figure` |\n"
    )
    found = mismatches(doc, manifest)
    assert [f.split(": ")[1] for f in found] == [
        "metrics.sample_accuracy",
        "metrics.outside.photographed.encode_accuracy",
        "metrics.no_such_figure",
    ]
