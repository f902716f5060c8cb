"""Writing the report: tables as CSV, Markdown and HTML, atomic text files, and the self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

from wsca_lightning.plain import csv_cell
from wsca_lightning.report.records import ReportFigure, ReportResult, Table


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { background: #f4f4f4; padding: 0 3px; border-radius: 3px; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; max-width: 1000px; }
.meta { color: #555; font-size: 0.9em; }
.skipped li, .notes li { margin-bottom: .3em; }
"""


def table_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=table.columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({key: csv_cell(row.get(key)) for key in table.columns})
    return buffer.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    """The table as a Markdown section: title, description and a pipe table (``|`` in cells escaped)."""
    headers = [_md_cell(h) for h, _ in table.display]
    lines = [f"## {table.title}", "", table.description, "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for cells in table.display_rows():
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _is_numeric_cell(text: str) -> bool:
    """Right-align numbers, ``mean ± sd``, ``value (p)``, ``(n=k)``, ``k/n`` and the missing-value dash."""
    return bool(re.fullmatch(r"[\d.eE+\-–± ()/n=]+", text)) and (any(ch.isdigit() for ch in text) or text == "–")


def table_html(table: Table) -> str:
    headers = "".join(f"<th>{html.escape(h)}</th>" for h, _ in table.display)
    body = []
    for cells in table.display_rows():
        tds = "".join(('<td class="num">' if _is_numeric_cell(c) else "<td>") + f"{html.escape(c)}</td>"
                      for c in cells)
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{headers}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def remove_stale(out_dir: Path, keep: set[Path]) -> None:
    """Drop figures/tables a previous report in the same directory wrote and this one did not."""
    if not (out_dir / "report.html").is_file():
        return
    for sub, suffixes in (("figures", {".png"}), ("tables", {".csv", ".md"})):
        for path in (out_dir / sub).glob("*"):
            if path.suffix in suffixes and path.is_file() and path.resolve() not in keep:
                path.unlink()


def render_html(result: ReportResult, figures: Sequence[ReportFigure], alpha: float, notes: Sequence[str]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>WSC report: {e(result.root.name)}</title><style>{_CSS}</style></head><body>",
        "<h1>Weight Space Correlation report</h1>",
        f"<p class=\"meta\">Source: <code>{e(str(result.root))}</code><br>Generated "
        f"{e(datetime.datetime.now().isoformat(timespec='seconds'))} by <code>wsca-report</code>; "
        f"significance level α = {alpha:g}. {len(result.runs)} runs read in {len(result.conditions)} conditions, "
        f"{len(result.skipped)} skipped.</p>",
        "<h2>Runs found</h2>",
        f"<p>Factors (override keys whose values differ across conditions): "
        f"{', '.join(f'<code>{e(f)}</code>' for f in result.factors) or 'none (a single condition)'}. Seeds are "
        "replicates; <code>hydra.*</code>, <code>paths.*</code> and <code>ckpt_path</code> overrides are ignored."
        "</p>",
        "<table><thead><tr><th>id</th><th>condition</th><th>runs</th><th>seeds</th><th>overrides defining it</th>"
        "</tr></thead><tbody>",
    ]
    for c in result.conditions:
        overrides = " ".join(f"<code>{e(o)}</code>" for o in c.overrides()) or "(none)"
        parts.append(f"<tr><td>{c.id}</td><td>{e(c.label)}</td><td>{e(', '.join(r.name for r in c.runs))}</td>"
                     f"<td>{e(', '.join(str(r.seed) for r in c.runs))}</td><td>{overrides}</td></tr>")
    parts.append("</tbody></table>")
    parts.append("<h2>Skipped runs</h2>")
    if result.skipped:
        parts.append("<ul class=\"skipped\">")
        parts += [f"<li><code>{e(str(s.path))}</code>: {e(s.reason)}</li>" for s in result.skipped]
        parts.append("</ul>")
    else:
        parts.append("<p>None.</p>")
    if notes:
        parts.append("<h2>Notes</h2><p>Values or runs left out of the statistics, and missing files:</p>"
                     "<ul class=\"notes\">")
        parts += [f"<li>{e(n)}</li>" for n in notes]
        parts.append("</ul>")
    parts.append("<h2>Tables</h2>")
    for table in result.tables.values():
        parts.append(f"<h3>{e(table.title)}</h3><p>{e(table.description)} "
                     f"(<code>tables/{table.name}.csv</code>)</p>{table_html(table)}")
    parts.append("<h2>Figures</h2>")
    for figure in figures:
        data = base64.b64encode((result.out_dir / "figures" / f"{figure.name}.png").read_bytes()).decode("ascii")
        parts.append(f"<figure><h3>{e(figure.title)}</h3><img src=\"data:image/png;base64,{data}\" "
                     f"alt=\"{e(figure.title)}\"><figcaption>{e(figure.caption)} "
                     f"(<code>figures/{e(figure.name)}.png</code>)</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
