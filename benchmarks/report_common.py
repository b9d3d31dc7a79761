"""What the benchmark reports share: reading a folder of step records, a mean ± standard
deviation cell, and replacing a generated section of RESULTS.md between its markers."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path


def load_records(folder: Path) -> dict:
    """{step name: record} for the JSON step records in ``folder``."""
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def mean_sd(values: list[float], digits: int = 1, count: bool = True) -> str:
    """"-", the single value, or "mean ± sd" (with "(n=N)" when ``count``)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    cell = f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return cell + (f" (n={len(values)})" if count else "")


def markers(name: str) -> tuple[str, str]:
    """The comments in RESULTS.md that enclose the generated section ``name``."""
    return f"<!-- {name}-results:begin -->", f"<!-- {name}-results:end -->"


def replace_readme_section(readme: Path | None, name: str, md: str) -> None:
    """Put ``md`` between ``<!-- NAME-results:begin -->`` and ``...:end -->`` in ``readme``
    (RESULTS.md; left alone when it has no such markers)."""
    if readme is None or not readme.exists():
        return
    begin, end = markers(name)
    text = readme.read_text()
    if begin in text and end in text:
        readme.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end),
                                 lambda _: begin + "\n" + md + "\n" + end, text, flags=re.S))
