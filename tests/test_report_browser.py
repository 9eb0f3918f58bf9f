"""The compare report as a reader sees it: ``report.html`` opened in a real headless browser (Debian's
``chromium-headless-shell``, installed by ``.ci/install_browser.sh``; skipped only when it is absent).

The report of seed groups (every table and plot kind: Table 1, stability, step windows, lines with
min–max bands, validation points with bars) is loaded from its folder as a reader opens it
(``file://``). A probe script, added to a copy of the page beside it, records after the page's load
event what the browser laid out: each table's rows, columns and height, each image's decoded size.
Every table of ``report.md`` must render with its rows and columns, and every plot must load as the
PNG the report wrote. A screenshot of the page is taken as the README's is.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread
from pngcheck import assert_real_png

from verl_erc.compare import main

BROWSER = "chromium-headless-shell"
pytestmark = [pytest.mark.process,  # starts a headless browser
              pytest.mark.skipif(shutil.which(BROWSER) is None, reason=f"{BROWSER} not installed (.ci/install_browser.sh)")]

PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({src: i.getAttribute("src"), complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width}));
  const tables = [...document.querySelectorAll("table")].map(t => ({rows: t.rows.length,
    columns: [...t.rows].map(r => r.cells.length), height: t.getBoundingClientRect().height}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images, tables});
  document.body.appendChild(out);
});
</script>"""


def browse(page: Path, *args: str) -> str:
    """Run the headless browser on ``page`` (a file URL) with ``args``; return its stdout."""
    result = subprocess.run(
        [BROWSER, "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000", *args,
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def markdown_tables(md: str) -> list[tuple[int, int]]:
    """(rows including the header, columns) of each Markdown table, in order."""
    tables, current = [], None
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|(---\|)+", line):  # the separator line is no row
                cells = line.strip().strip("|").count("|") + 1
                current = (current[0] + 1, cells) if current else (1, cells)
        elif current:
            tables.append(current)
            current = None
    return tables


#: the committed laptop study's metrics: 5 seeds of DAPO and of ERC-DAPO, 20 steps each (docs/laptop_study.md)
STUDY = sorted((Path(__file__).resolve().parents[1] / "docs" / "laptop_study" / "metrics").glob("*.jsonl"))


def test_every_table_renders_and_every_plot_loads_in_a_browser(tmp_path):
    out = tmp_path / "report"
    assert len(STUDY) == 10
    assert main([*map(str, STUDY), "--out", str(out), "--windows", "1-5", "18-20"]) == 0
    md = (out / "report.md").read_text()
    probed = out / "probed.html"
    probed.write_text((out / "report.html").read_text().replace("</body>", PROBE + "\n</body>"))
    dom = browse(probed, "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    layout = json.loads(html.unescape(found.group(1)))

    expected = markdown_tables(md)
    assert len(expected) >= 4  # Runs, last and best validation, stability, step windows
    assert [(t["rows"], set(t["columns"])) for t in layout["tables"]] == [(rows, {cols}) for rows, cols in expected]
    assert all(t["height"] > 10 * t["rows"] for t in layout["tables"])  # laid out, a line per row at least

    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert sorted(pngs) == sorted(p.name for p in out.glob("*.png")) and len(pngs) >= 6
    assert [i["src"] for i in layout["images"]] == pngs
    for image in layout["images"]:
        decoded = imread(out / image["src"])
        assert image["complete"] and (image["height"], image["width"]) == decoded.shape[:2], image
        assert image["shown"] > 100, image  # drawn on the page, not collapsed

    shot = tmp_path / "report.png"
    browse(out / "report.html", "--window-size=1000,1400", f"--screenshot={shot}")
    assert_real_png(shot)
    assert imread(shot).shape[:2] == (1400, 1000)
