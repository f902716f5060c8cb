"""``wsca-report``'s HTML page in a real browser (headless Chromium): it renders, every figure decodes, every table
is there. Built from hand-written runs (no training); skipped only where Chromium is not installed (``.ci/run``
installs Debian's ``chromium``)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")
from PIL import Image, ImageStat  # noqa: E402 - a matplotlib dependency

from test_report import _fake_runs, _sample_summary  # noqa: E402 - hand-written runs, shared with test_report
from wsca_lightning import report  # noqa: E402

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser")) if path), None)
WINDOW = (1280, 1600)
TIMEOUT_S = 90
#: Appended to a copy of the page: on load, every <img>'s state and every table's shape, as JSON in the DOM.
#: The last <img> is a broken control: the check must report it as not loaded.
PROBE = """
<img id="broken-control" alt="broken control" src="data:image/png;base64,iVBORw0KGgoAAAA=">
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {id: img.id, alt: img.alt, loaded: img.complete && img.naturalWidth > 0, width: img.naturalWidth,
            height: img.naturalHeight};
  });
  var tables = Array.prototype.map.call(document.querySelectorAll("table"), function (table) {
    return {rows: table.rows.length, columns: table.rows.length ? table.rows[0].cells.length : 0};
  });
  var out = document.createElement("pre");
  out.id = "probe-result";
  out.textContent = JSON.stringify({images: images, tables: tables});
  document.body.appendChild(out);
});
</script>
"""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a throw-away profile, in its own process group, killed (with its helpers) when it
    returns or times out. ``--no-sandbox`` only as root, where Chromium refuses to start without it."""
    profile = tmp_path / "chromium-profile"
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
               "--force-device-scale-factor=1", f"--user-data-dir={profile}", *args]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")
    env = {**os.environ, "HOME": str(profile)}  # crash reports and caches stay in tmp_path
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _probe(dom: str) -> dict[str, Any]:
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', dom, re.S)
    assert match, "the probe script did not run: " + dom[-2000:]
    return json.loads(html.unescape(match.group(1)))


def test_report_renders_in_chromium_with_every_figure_and_table(tmp_path: Path) -> None:
    _fake_runs(_sample_summary(None), tmp_path / "mr", [("multitask", 0.0), ("multitask", 1.0)], seeds=1)
    result = report.build_report(tmp_path / "mr", tmp_path / "out")
    page = result.html.read_text(encoding="utf-8")
    assert len(result.figures) >= 4 and page.count("<table>") == 1 + len(result.tables)

    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                     result.html.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-3000:]
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == WINDOW
        gray = image.convert("L")
    stat = ImageStat.Stat(gray)
    dark = sum(gray.histogram()[:160]) / (WINDOW[0] * WINDOW[1])
    assert stat.stddev[0] > 10 and 0.005 < dark < 0.5, (stat.stddev, dark)  # text and tables on white, not blank

    probed = result.html.with_name("report_probe.html")  # beside the report: same base URL
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", probed.as_uri())
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = _probe(proc.stdout)
    *figures, control = found["images"]
    assert control == {"id": "broken-control", "alt": "broken control", "loaded": False, "width": 0, "height": 0}
    assert len(figures) == len(result.figures)
    broken = [image["alt"] for image in figures if not image["loaded"]]
    assert not broken, f"figures that did not load: {broken}"
    for image, path in zip(figures, result.figures):
        with Image.open(path) as png:
            assert (image["width"], image["height"]) == png.size, path
    expected = [{"rows": 1 + len(result.conditions), "columns": 5}]
    expected += [{"rows": 1 + len(table.rows), "columns": len(table.display)} for table in result.tables.values()]
    assert found["tables"] == expected
