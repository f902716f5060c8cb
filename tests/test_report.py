"""``wsca-report``: tables, figures and the HTML page from a real multirun; skipped runs; errors; Spearman; k sweep."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402 - a matplotlib dependency

from wsca_lightning import report  # noqa: E402
from wsca_lightning.cli.report import main as report_main  # noqa: E402
from wsca_lightning.cli.train import main as train_main  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ["scanner", "hospital", "spacing", "cervical_length", "bmi"]
TINY = [
    "data.num_train=96",
    "data.num_val=48",
    "data.image_size=[32,48]",
    "trainer.max_epochs=1",
    "callbacks.wsc.subset_size=96",
    "callbacks.wsc.num_permutations=20",
    "callbacks.wsc.num_bootstrap=50",
    # the report reads the summaries and metrics and draws its own figures: the runs' heatmaps and fit-end plots
    # (about a second each) are not read
    "callbacks.wsc.save_plots=false",
    "trainer.enable_progress_bar=false",
]


def _run_report(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script when there is one (what users run), else the module."""
    script = Path(sys.executable).with_name("wsca-report")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "wsca_lightning.cli.report"]
    return subprocess.run([*command, str(root), *args], capture_output=True, text=True, timeout=120)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100, (path, image.size)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `wsca-train -m` sweep: 2 seeds x shortcut strength 0.0 / 1.0, 1 epoch on tiny data (once per module),
    through the console script's entry point in this process."""
    base = tmp_path_factory.mktemp("report")
    sweep = base / "mr"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.setattr(sys, "argv", ["wsca-train", "-m", f"hydra.sweep.dir={sweep}", "seed=0,1",
                                    "data.shortcut_strength=0.0,1.0", *TINY])
        train_main()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    return sweep


@pytest.fixture(scope="module")
def built(multirun: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    proc = _run_report(multirun)
    return multirun / "report", proc


@pytest.mark.slow
def test_report_of_a_multirun(multirun: Path, built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = built
    assert proc.returncode == 0, proc.stderr
    assert "Read 4 runs in 2 conditions" in proc.stdout
    assert str(out / "report.html") in proc.stdout
    assert "wsc_summary.json: field" not in proc.stdout  # the summaries wsca-train writes pass check_summary

    tables = out / "tables"
    wsc = _read_csv(tables / "wsc_by_condition.csv")
    assert len(wsc) == 2 * len(TASKS)
    assert {(r["data.shortcut_strength"], r["task"]) for r in wsc} == {(s, t) for s in ("0.0", "1.0") for t in TASKS}
    for row in wsc:
        assert row["n"] == "2"
        assert 0.0 <= float(row["max_abs_mean"]) <= 1.0 and float(row["max_abs_sd"]) >= 0.0
        assert 0 <= int(row["n_significant"]) <= 2
        assert 0.0 < float(row["median_p"]) <= 1.0
    accuracy = _read_csv(tables / "accuracy_by_condition.csv")
    assert [r["condition"] for r in accuracy] == ["data.shortcut_strength=0.0", "data.shortcut_strength=1.0"]
    assert all(r["n"] == "2" and 0.0 <= float(r["val_auroc_mean"]) <= 1.0 for r in accuracy)
    runs = _read_csv(tables / "runs.csv")
    assert len(runs) == 4
    assert sorted((r["condition_id"], r["seed"]) for r in runs) == [("c1", "0"), ("c1", "1"), ("c2", "0"), ("c2", "1")]
    assert {f"{t}_max_abs" for t in TASKS} <= set(runs[0])
    trend = _read_csv(tables / "trend.csv")
    assert [r["task"] for r in trend] == TASKS
    assert all(r["n_levels"] == "2" and abs(float(r["spearman_rho"])) == 1.0 for r in trend)  # two levels
    assert not (tables / "k_sweep.csv").exists()  # this version's summaries may have no k_sweep
    for name in ("wsc_by_condition", "accuracy_by_condition", "runs", "trend"):
        markdown = (tables / f"{name}.md").read_text()
        assert markdown.count("\n|") >= len(_read_csv(tables / f"{name}.csv")) + 1

    figures = out / "figures"
    expected = {"reference_histograms.png", "trend.png"}
    for slug in ("c1_shortcut_strength-0.0", "c2_shortcut_strength-1.0"):
        expected |= {f"heatmap_{slug}.png", f"history_{slug}.png"}
    assert expected <= {p.name for p in figures.iterdir()}
    for name in expected:
        _assert_png(figures / name)

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(list(figures.glob("*.png")))
    for header in ("WSC by condition", "Primary-task accuracy by condition", "Runs", "Skipped runs",
                   "<th>max|WSC|</th>", "<th>val AUROC</th>", "data.shortcut_strength=1.0"):
        assert header in page
    assert "seed=" not in page.split("Skipped runs")[0].split("overrides defining it")[1]  # seeds are replicates


@pytest.mark.slow
def test_skipped_runs_are_listed_with_their_reason(
    multirun: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "several"
    shutil.copytree(multirun, root / "sweep_a", ignore=shutil.ignore_patterns("report", "*.ckpt"))
    shutil.copytree(multirun / "0", root / "broken", ignore=shutil.ignore_patterns("*.ckpt"))
    (root / "broken" / "wsc" / "wsc_summary.json").write_text('{"primary": "risk", "tasks": ')
    (root / "crashed").mkdir()
    shutil.copy(next((multirun / "1").rglob("metrics.csv")), root / "crashed" / "metrics.csv")
    (root / "empty_tasks" / "wsc").mkdir(parents=True)
    (root / "empty_tasks" / "wsc" / "wsc_summary.json").write_text('{"primary": "risk", "tasks": {}}')

    assert report_main([str(root), "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert "Read 4 runs in 2 conditions" in stdout and "Skipped 3:" in stdout
    skipped_lines = stdout.split("Skipped 3:\n")[1].split("\nNotes (")[0].split("\nReport: ")[0].splitlines()
    reasons = {Path(line.strip().split(": ")[0]).name: line.split(": ", 1)[1] for line in skipped_lines}
    assert set(reasons) == {"broken", "crashed", "empty_tasks"}
    assert "JSONDecodeError" in reasons["broken"] and "wsc_summary.json" in reasons["broken"]
    assert "no wsc/wsc_summary.json" in reasons["crashed"]
    assert "no metadata tasks" in reasons["empty_tasks"]
    runs = _read_csv(tmp_path / "out" / "tables" / "runs.csv")
    assert sorted(r["run"] for r in runs) == ["sweep_a/0", "sweep_a/1", "sweep_a/2", "sweep_a/3"]
    page = (tmp_path / "out" / "report.html").read_text()
    section = page.split("<h2>Skipped runs</h2>")[1].split("<h2>")[0]
    assert "broken" in section and "crashed" in section and "empty_tasks" in section and "JSONDecodeError" in section


def test_missing_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert report_main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_directory_without_runs_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("nothing here")
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "wsc/wsc_summary.json" in err
    assert not (tmp_path / "report").exists()


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = _run_report(tmp_path / "missing")
    assert proc.returncode == 2 and "missing" in proc.stderr


def test_spearman_known_values() -> None:
    assert report.spearman([0.0, 0.2, 0.4, 0.6], [0.1, 0.3, 0.35, 0.9]) == pytest.approx(1.0)
    assert report.spearman([0.0, 0.2, 0.4, 0.6], [0.9, 0.5, 0.3, 0.1]) == pytest.approx(-1.0)
    assert report.rankdata([10.0, 20.0, 20.0, 30.0]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert report.rankdata([3.0, 1.0, 3.0, 3.0]).tolist() == [3.0, 1.0, 3.0, 3.0]
    # ties: ranks x = 1,2,3,4 and y = 1,2.5,2.5,4 -> Pearson of the ranks
    x, y = np.array([1, 2, 3, 4.0]), np.array([1, 2.5, 2.5, 4.0])
    expected = float(np.corrcoef(x, y)[0, 1])
    assert report.spearman([1, 2, 3, 4], [5, 7, 7, 9]) == pytest.approx(expected)
    assert report.spearman([1, 2, 3], [4, 4, 4]) != report.spearman([1, 2, 3], [4, 4, 4])  # constant: NaN
    assert report.spearman([1, 2, float("nan"), 4], [1, 3, 2, 5]) == pytest.approx(1.0)  # NaN pairs dropped


def _fake_runs(sample_summary: dict, root: Path, conditions: list[tuple[str, float]], seeds: int = 2) -> None:
    """Runs with hand-written summaries (k_sweep added) and metrics.csv, no training."""
    rng = np.random.default_rng(0)
    job = 0
    for mode, strength in conditions:
        for seed in range(seeds):
            run = root / str(job)
            (run / "wsc").mkdir(parents=True)
            (run / ".hydra").mkdir()
            (run / "csv" / "version_0").mkdir(parents=True)
            summary = json.loads(json.dumps(sample_summary))
            summary["k_sweep"] = {"k": [10, 20, 50], "max_abs": {
                name: [float(v) for v in rng.uniform(0.1, 0.6, 3)] for name in summary["tasks"]}}
            (run / "wsc" / "wsc_summary.json").write_text(json.dumps(summary))
            (run / ".hydra" / "overrides.yaml").write_text(
                f"- seed={seed}\n- model.head_mode={mode}\n- data.shortcut_strength={strength}\n"
                f"- hydra.run.dir=/somewhere/{job}\n")
            primary = summary["primary"]
            (run / "csv" / "version_0" / "metrics.csv").write_text(
                f"epoch,step,train/{primary}/loss,val/{primary}/loss,val/{primary}/auroc,"
                f"val/{primary}/balanced_accuracy\n"
                "0,9,,1.1,0.6,0.5\n0,9,1.2,,,\n1,19,,0.9,0.7,0.55\n1,19,1.0,,,\n")
            job += 1


def _sample_summary(multirun: Path | None) -> dict:
    """A real summary when the multirun exists, else a minimal hand-written one."""
    if multirun is not None:
        return json.loads((multirun / "0" / "wsc" / "wsc_summary.json").read_text())
    task = {"max_abs": 0.3, "mean_abs": 0.1, "matrix": [[0.3, -0.1], [-0.2, 0.1]], "rows": ["a", "b"],
            "cols": ["x", "y"], "unprojected": {"max_abs": 0.2}, "interpretable": True,
            "null": {"p": 0.04, "q05": 0.1, "q95": 0.25}, "probe": {"auroc": 0.9}}
    history = [{"epoch": e, "tasks": {"site": {"max_abs": 0.3, "p": 0.04, "q05": 0.1, "q95": 0.25}}} for e in (0, 1)]
    return {"primary": "label", "epoch": 1, "k": 50, "tasks": {"site": task}, "history": history,
            "reference": {"intra": {"values": [-0.2, 0.1]}, "inter": {"values": [0.0, 0.05, -0.05]}}}


def test_k_sweep_and_categorical_factor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hand-written summaries with k_sweep, 2 categorical levels x 2 numeric levels: k_sweep table and boxplots,
    the per-condition chart, and a trend per level of the categorical factor. No progress bar off a terminal."""
    _fake_runs(_sample_summary(None), tmp_path / "mr", [("multitask", 0.0), ("multitask", 1.0),
                                                        ("detached", 0.0), ("detached", 1.0)])
    result = report.build_report(tmp_path / "mr", tmp_path / "out", alpha=0.05)
    err = capsys.readouterr().err
    assert "reading runs" not in err and "drawing figures" not in err, err
    assert len(result.runs) == 8 and not result.skipped
    assert result.factors == ["model.head_mode", "data.shortcut_strength"]
    assert len(result.conditions) == 4 and all(len(c.runs) == 2 for c in result.conditions)

    sweep = _read_csv(tmp_path / "out" / "tables" / "k_sweep.csv")
    assert len(sweep) == 4 * 1 * 4  # conditions x tasks x (3 k + none)
    assert [r["k"] for r in sweep[:4]] == ["10", "20", "50", "none"]
    assert float(sweep[3]["max_abs_mean"]) == pytest.approx(0.2) and float(sweep[3]["max_abs_sd"]) == 0.0
    assert "± " in (tmp_path / "out" / "tables" / "k_sweep.md").read_text()

    trend = _read_csv(tmp_path / "out" / "tables" / "trend.csv")
    assert {r["series"] for r in trend} == {"model.head_mode=multitask", "model.head_mode=detached"}
    accuracy = _read_csv(tmp_path / "out" / "tables" / "accuracy_by_condition.csv")
    assert [float(r["val_auroc_mean"]) for r in accuracy] == [0.7] * 4  # last epoch, from sparse rows

    names = {p.name for p in result.figures}
    assert {"wsc_by_condition.png", "trend.png", "reference_histograms.png"} <= names
    assert sum(name.startswith("k_sweep_") for name in names) == 4
    for path in result.figures:
        _assert_png(path)
    assert result.html.read_text().count("data:image/png;base64,") == len(result.figures)


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bars_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, bars count the runs read and the figures drawn, on stderr."""
    _fake_runs(_sample_summary(None), tmp_path / "mr", [("multitask", 0.0)], seeds=2)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = report.build_report(tmp_path / "mr", tmp_path / "out")
    shown = terminal.getvalue()
    n = len(result.figures)
    assert re.search(r"reading runs: 100%.* 2/2 ", shown), shown
    assert re.search(rf"drawing figures: 100%.* {n}/{n} ", shown) and n >= 3, shown


@pytest.mark.slow
def test_k_sweep_from_a_real_summary(multirun: Path, tmp_path: Path) -> None:
    """A copy of a real summary with a k_sweep added: the table and the boxplot figure appear."""
    _fake_runs(_sample_summary(multirun), tmp_path / "mr", [("multitask", 0.5)], seeds=2)
    result = report.build_report(tmp_path / "mr", tmp_path / "out")
    sweep = _read_csv(tmp_path / "out" / "tables" / "k_sweep.csv")
    assert len(sweep) == len(TASKS) * 4
    assert {r["task"] for r in sweep} == set(TASKS)
    k_figures = [p for p in result.figures if p.name.startswith("k_sweep_")]
    assert len(k_figures) == 1
    _assert_png(k_figures[0])
    assert result.factors == [] and result.conditions[0].label == "all runs"


def test_report_reads_files_only() -> None:
    """No torch, Lightning or training code behind wsca-report: it must run where only the outputs are."""
    code = ("import sys, wsca_lightning.cli.report, wsca_lightning.report; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'hydra') "
            "or m.startswith(('wsca_lightning.models', 'wsca_lightning.callbacks', 'wsca_lightning.data', "
            "'wsca_lightning.wsc'))); print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------------- corrupt input


def _summary_of(run: Path) -> Path:
    return run / "wsc" / "wsc_summary.json"


def _notes_section(page: str) -> str:
    import html

    return html.unescape(page.split("<h2>Notes</h2>")[1].split("<h2>")[0])


def test_partly_corrupt_summaries_state_the_runs_each_statistic_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 runs of one condition, 2 of them partly corrupt in different ways (a NaN max|WSC|; a string max|WSC|, a
    string probe AUROC and no history): every statistic counts only the values it used, and the notes (printed and
    on the page) name both files and every field left out, and nothing of the 3 clean runs."""
    root = tmp_path / "mr"
    _fake_runs(_sample_summary(None), root, [("multitask", 0.5)], seeds=5)
    for job, value in enumerate([0.1, 0.2, 0.3, 0.4, 0.5]):
        summary = json.loads(_summary_of(root / str(job)).read_text())
        summary["tasks"]["site"]["max_abs"] = value
        if job == 1:
            summary["tasks"]["site"]["max_abs"] = float("nan")  # json.dumps writes NaN, which json.load reads back
        if job == 3:
            summary["tasks"]["site"]["max_abs"] = "0.4"
            summary["tasks"]["site"]["probe"]["auroc"] = "high"
            del summary["history"]
        _summary_of(root / str(job)).write_text(json.dumps(summary))

    assert report_main([str(root), "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out

    (row,) = _read_csv(tmp_path / "out" / "tables" / "wsc_by_condition.csv")
    assert row["n"] == "5"
    assert row["max_abs_n"] == "3" and float(row["max_abs_mean"]) == pytest.approx(0.3)  # runs 0, 2, 4
    assert float(row["max_abs_sd"]) == pytest.approx(0.2)
    assert row["probe_auroc_n"] == "4" and row["unprojected_max_abs_n"] == "5" and row["p_n"] == "5"
    markdown = (tmp_path / "out" / "tables" / "wsc_by_condition.md").read_text()
    assert "0.300 ± 0.200 (n=3)" in markdown and "0.900 ± 0.000 (n=4)" in markdown
    runs = {r["run"]: r for r in _read_csv(tmp_path / "out" / "tables" / "runs.csv")}
    assert runs["1"]["site_max_abs"] == "" and runs["3"]["site_max_abs"] == "" and runs["4"]["site_max_abs"] == "0.5"

    nan_file, string_file = str(_summary_of(root / "1")), str(_summary_of(root / "3"))
    page_notes = _notes_section((tmp_path / "out" / "report.html").read_text())
    printed_notes = stdout.split("Notes (")[1].split("\nReport: ")[0]
    for notes in (page_notes, printed_notes):
        assert f"{nan_file}: field tasks.site.max_abs is NaN, expected a number: left out of max|WSC|" in notes
        assert f"{string_file}: field tasks.site.max_abs is the string '0.4', expected a number" in notes
        assert f"{string_file}: field tasks.site.probe.auroc is the string 'high', expected a number" in notes
        assert f"{string_file}: field history is absent" in notes
        assert "wsca-analyze" in notes  # what to do about it
        for clean in ("0", "2", "4"):
            assert str(root / clean / "wsc") not in notes


def test_unreadable_summaries_never_stop_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Truncated JSON, bytes that are not UTF-8, a JSON array, nesting too deep to decode: skipped, each with its file
    and reason. A summary whose every field has the wrong type is read: the report is written, with notes."""
    root = tmp_path / "mr"
    _fake_runs(_sample_summary(None), root, [("multitask", 0.5)], seeds=6)
    _summary_of(root / "1").write_text('{"primary": "label", "tasks": {"site": {"max_abs": 0.')
    _summary_of(root / "2").write_bytes(b'{"primary": "\xff\xfe"}')
    _summary_of(root / "3").write_text("[]")
    _summary_of(root / "4").write_text("[" * 200_000 + "]" * 200_000)
    _summary_of(root / "5").write_text(json.dumps({
        "primary": ["label"], "epoch": "last", "k": {},
        "tasks": {"site": {"max_abs": {}, "rows": 3, "cols": "x", "matrix": "m", "probe": [], "null": "n", "test": 5,
                           "unprojected": {"max_abs": True}, "interpretable": "yes"}},
        "history": 5, "k_sweep": {"k": [{}], "max_abs": {}}, "reference": {"intra": {"values": "abc"}, "inter": 3},
    }))

    assert report_main([str(root), "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert "Read 2 runs in 1 conditions" in stdout and "Skipped 4:" in stdout
    skipped = stdout.split("Skipped 4:\n")[1].split("\nNotes (")[0]
    for job, reason in (("1", "JSONDecodeError"), ("2", "UnicodeDecodeError"), ("3", "a JSON list, expected an object"),
                        ("4", "RecursionError")):
        line = next(line for line in skipped.splitlines() if line.startswith(f"  {root / job}:"))
        assert str(_summary_of(root / job)) in line and reason in line and "wsca-analyze" in line, line

    (row,) = _read_csv(tmp_path / "out" / "tables" / "wsc_by_condition.csv")
    assert (row["n"], row["max_abs_n"], row["unprojected_max_abs_n"], row["p_n"]) == ("2", "1", "1", "1")
    assert row["n_significant"] == "1"  # run 0 only: run 5's unusable test object does not fall back to null.p
    notes = _notes_section((tmp_path / "out" / "report.html").read_text())
    garbage = f"{_summary_of(root / '5')}: field"
    for field, problem in (("primary", "is an array, expected a string"), ("epoch", "is the string 'last'"),
                           ("tasks.site.max_abs", "is an object"), ("tasks.site.unprojected.max_abs", "is true"),
                           ("tasks.site.probe", "is an array, expected an object"), ("tasks.site.test", "is 5"),
                           ("tasks.site.rows", "is 3"), ("tasks.site.matrix", "is the string 'm'"),
                           ("tasks.site.interpretable", "is the string 'yes'"), ("history", "is 5"),
                           ("k_sweep", "is malformed"), ("reference.intra.values", "is the string 'abc'"),
                           ("reference.inter", "is 3, expected an object")):
        assert f"{garbage} {field} {problem}" in notes, field
    assert (tmp_path / "out" / "figures").is_dir() and (tmp_path / "out" / "report.html").is_file()


# --------------------------------------------------------------------------------------------------- overrides


def test_overrides_are_read_by_hydras_parser(tmp_path: Path) -> None:
    """Every form of Hydra's override grammar: the key (with its package) and the value Hydra would use."""
    source = tmp_path / ".hydra" / "overrides.yaml"
    values, notes = report.parse_overrides([
        "+model.extra=1", "++trainer.max_epochs=3", "~model.dropout", "~data.tag=x", "db@backup=mysql",
        "+db@backup.alt=pg", "data.name='1.0'", 'data.label="a,b"', "optim.lr=1e-3", "data.size=[32,48]",
        "data.strength=0.0,1.0", "data.mix=choice(b,a)", "seed=1", "seed=2", "data.path=/a/b-c.csv",
    ], source)
    plain = {key: (v.key_or_group, v.value, v.display) for key, v in values.items()}
    assert plain["model.extra"] == ("model.extra", 1, "1")
    assert plain["trainer.max_epochs"] == ("trainer.max_epochs", 3, "3")
    assert plain["model.dropout"][2] == plain["data.tag"][2] == "(deleted)"
    assert plain["db@backup"] == ("db", "mysql", "mysql") and plain["db@backup.alt"] == ("db", "pg", "pg")
    assert plain["data.name"] == ("data.name", "1.0", "'1.0'")  # quoted: a string, shown with its quotes
    assert plain["data.label"] == ("data.label", "a,b", '"a,b"')  # quoted: not a sweep
    assert plain["optim.lr"][1] == pytest.approx(1e-3) and plain["optim.lr"][2] == "1e-3"
    assert plain["data.size"][1] == [32, 48]
    assert plain["seed"][1] == 2  # the later line wins, as in Hydra
    assert plain["data.path"][1] == "/a/b-c.csv"
    assert plain["data.strength"][2] == "0.0,1.0" and plain["data.mix"][2] == "choice(b,a)"
    assert values["data.mix"].value == report.parse_overrides(["data.mix=a,b"], source)[0]["data.mix"].value
    assert len(notes) == 2 and all(str(source) in n and "is a sweep" in n for n in notes)
    assert "item 11 'data.strength=0.0,1.0'" in notes[0]

    values, notes = report.parse_overrides(["data.size=[32,48", "seed=0"], source)
    assert values["data.size=[32,48"].display == "(unparsed)" and values["seed"].value == 0
    (note,) = notes
    assert note.startswith(f"{source}: item 1 'data.size=[32,48' is not a Hydra override (") and "key=value" in note


def _record(tmp_path: Path, name: str, overrides: list[str]) -> report.RunRecord:
    return report.RunRecord(path=tmp_path / name, name=name, summary={"tasks": {}}, overrides=overrides,
                            metrics={}, metrics_source="metrics.csv")


def test_conditions_are_grouped_by_parsed_key_and_value(tmp_path: Path) -> None:
    """`+key`/`++key` group with `key`; `key@package` is its own key; `~key` is a level of its own (deleted);
    `'1.0'` is not 1.0; a sweep is not the quoted string of the same text; seed and hydra.* are no factors."""
    base = ["model.extra=1", "db@backup=mysql", "data.tag='1.0'"]
    runs = {
        "a": _record(tmp_path, "a", ["seed=0", *base, "hydra.run.dir=/x/0"]),
        "b": _record(tmp_path, "b", ["seed=1", "++model.extra=1", "+db@backup=mysql", "data.tag='1.0'",
                                     "hydra.run.dir=/x/1"]),
        "c": _record(tmp_path, "c", ["seed=0", "model.extra=1", "db@backup=postgres", "data.tag='1.0'"]),
        "d": _record(tmp_path, "d", ["seed=0", "~model.extra", "db@backup=mysql", "data.tag='1.0'"]),
        "e": _record(tmp_path, "e", ["seed=0", "model.extra=1", "db@backup=mysql", "data.tag=1.0"]),
        "f": _record(tmp_path, "f", ["seed=0", *base, "data.mix=a,b"]),
        "g": _record(tmp_path, "g", ["seed=0", *base, "data.mix='a,b'"]),
        "h": _record(tmp_path, "h", ["seed=0", *base, "db=mysql"]),
    }
    conditions, factors = report.group_conditions(list(runs.values()))
    assert factors == ["model.extra", "db@backup", "data.tag", "data.mix", "db"]
    assert len(conditions) == 7
    assert runs["a"].condition is runs["b"].condition
    assert len({id(run.condition) for run in runs.values()}) == 7
    assert runs["c"].condition.values["db@backup"] == "postgres"
    assert "model.extra=(deleted)" in runs["d"].condition.label and "~model.extra" in runs["d"].condition.overrides()
    assert runs["a"].condition.values["data.tag"] == "1.0" and runs["e"].condition.values["data.tag"] == 1.0
    assert "data.tag='1.0'" in runs["a"].condition.label and "data.tag=1.0," in runs["e"].condition.label + ","
    assert runs["g"].condition.values["data.mix"] == "a,b" and runs["f"].condition.values["data.mix"] != "a,b"
    assert runs["h"].condition.values["db"] == "mysql" and runs["a"].condition.values["db"] == "(not set)"
    assert any("is a sweep" in note for note in runs["f"].notes)


def test_run_directory_overrides_and_seed(tmp_path: Path) -> None:
    """load_run reads .hydra/overrides.yaml through Hydra's parser: `+seed=7` is the seed, and a line Hydra cannot
    read is noted with the file and item."""
    root = tmp_path / "mr"
    _fake_runs(_sample_summary(None), root, [("multitask", 0.5)], seeds=1)
    overrides_file = root / "0" / ".hydra" / "overrides.yaml"
    overrides_file.write_text("- +seed=7\n- ~model.dropout\n- data.tag='x y'\n- bad=[1\n")
    run = report.load_run(root / "0", root)
    assert isinstance(run, report.RunRecord) and run.seed == 7
    assert {key: v.value for key, v in run.parsed_overrides().items() if key != "bad=[1"} == {
        "seed": 7, "model.dropout": "(not set)", "data.tag": "x y"}
    assert any(note.startswith(f"{overrides_file}: item 4 'bad=[1' is not a Hydra override") for note in run.notes)
