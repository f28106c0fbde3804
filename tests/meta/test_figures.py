"""The figures the documents quote from the shipped model are the ones its manifest records.

A table whose header has a `recorded as` column is a table of recorded figures: each row names, in that column, a path
into artifacts/default/manifest.json (or, where the header says `recorded in artifacts/NAME as`, into that model
directory's manifest) (`metrics.sample_accuracy`; `{a,b}` expands as in bash, one path per value), and
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
KEY_COLUMN = re.compile(r"^recorded (?:in `?artifacts/([\w-]+)`? )?as$")
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


def recorded_rows(doc: Path) -> list[tuple[int, str, str, Path]]:
    """(line number, stated cell, key cell, manifest) of every row of every recorded-figures table in `doc`."""
    rows, key_at, manifest = [], None, MANIFEST
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if not line.startswith("|"):
            key_at = None
            continue
        row = cells(line)
        if key_at is None:
            found = [(i, m) for i, c in enumerate(row) if (m := KEY_COLUMN.match(c))]
            key_at = found[0][0] if found else -1
            if found and found[0][1][1]:
                manifest = ROOT / "artifacts" / found[0][1][1] / "manifest.json"
            elif found:
                manifest = MANIFEST
            continue
        if key_at < 1 or set(line) <= set("|-: "):
            continue
        rows.append((number, row[key_at - 1], row[key_at].strip("`"), manifest))
    return rows


def lookup(manifest: dict[str, Any], path: str) -> Any:
    value: Any = manifest
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def mismatches(doc: Path, manifests: dict[Path, dict[str, Any]] | None = None) -> list[str]:
    """Each stated figure of `doc` that is not its recorded one, as 'doc:line: path: stated X, recorded Y' (manifests:
    read from disk unless given, by path)."""
    found = []
    for line, stated, key, source in recorded_rows(doc):
        manifest = (manifests or {}).get(source) or json.loads(source.read_text())
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
    assert any(KEY_COLUMN.match(c) for c in cells(first_table)), (
        "docs/quality.md's first table is not its recorded figures"
    )
    assert len(recorded_rows(doc)) >= 20


def test_every_figure_the_documents_quote_from_the_shipped_manifest_is_the_recorded_one(
    manifest: dict[str, Any],
) -> None:
    found = [m for doc in DOCS for m in mismatches(doc)]
    assert not found, "documents disagree with the manifests of artifacts/:\n" + "\n".join(found)


def test_a_figure_that_differs_from_the_record_is_found(tmp_path: Path, manifest: dict[str, Any]) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "| figure | value | recorded as |\n|---|---|---|\n"
        "| samples | 99.5% | `metrics.sample_accuracy` |\n"
        "| ratio | 1.15 | `metrics.frechet_ratio` |\n"
        "| sets | 99.7 / 98.0 / 98.7 / 99.1% | `metrics.outside.{drawn,typed,scanned,photographed}.encode_accuracy` |\n"
        "| gone | 1 | `metrics.no_such_figure` |\n"
    )
    found = mismatches(doc, {MANIFEST: manifest})
    assert [f.split(": ")[1] for f in found] == [
        "metrics.sample_accuracy",
        "metrics.outside.photographed.encode_accuracy",
        "metrics.no_such_figure",
    ]


def test_a_table_recorded_in_another_model_directory_is_checked_against_its_manifest(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    other = ROOT / "artifacts" / "fashion" / "manifest.json"
    doc.write_text(
        "| figure | value | recorded in `artifacts/fashion` as |\n|---|---|---|\n"
        "| samples | 91.0% | `metrics.sample_accuracy` |\n\n"
        "| figure | value | recorded as |\n|---|---|---|\n| samples | 99.4% | `metrics.sample_accuracy` |\n"
    )
    assert [row[3] for row in recorded_rows(doc)] == [other, MANIFEST]
    manifests = {other: {"metrics": {"sample_accuracy": 0.9104}}, MANIFEST: {"metrics": {"sample_accuracy": 0.5}}}
    assert [f.split(": ")[1] for f in mismatches(doc, manifests)] == ["metrics.sample_accuracy"]
    assert mismatches(doc, manifests)[0].startswith("doc.md:7")
