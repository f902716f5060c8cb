"""Figures of one run (wsca_lightning.figures): colour range, labels, atomic PNG saving, history panels."""

from __future__ import annotations


import pytest

pytest.importorskip("matplotlib")

import matplotlib.collections  # noqa: E402
import matplotlib.image  # noqa: E402

from wsca_lightning.figures import heatmap_figure, history_figure, save_figure  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRIMARY = "plane"
PRIMARY_CLASSES = ["abdomen", "head", "femur"]


def _tasks(*, large: bool = False) -> dict[str, dict]:
    """Three metadata tasks against a 3-class primary: 3 + 4 + 2 columns, one NaN cell, one not interpretable."""
    return {
        "sex": {
            "matrix": [[0.12, -0.30, 0.05], [0.80 if large else 0.41, -0.02, -0.44], [-0.11, 0.27, float("nan")]],
            "rows": PRIMARY_CLASSES,
            "cols": ["female", "male", "unknown"],
            "interpretable": True,
            "null": {"p": 0.012, "z": 3.1, "q05": 0.1, "q95": 0.3},
            "max_abs": 0.80 if large else 0.44,
        },
        "ga_bin": {
            "matrix": [[0.2, -0.1, 0.0, 0.33], [-0.25, 0.15, 0.05, -0.5], [0.01, 0.02, -0.03, 0.04]],
            "rows": PRIMARY_CLASSES,
            "cols": ["<20w", "20-28w", "28-34w", ">34w"],
            "interpretable": True,
            "null": None,
            "max_abs": 0.5,
        },
        "site": {
            "matrix": [[0.1, -0.1], [0.2, -0.2], [-0.3, 0.3]],
            "rows": PRIMARY_CLASSES,
            "cols": ["A", "B"],
            "interpretable": False,
            "null": {"p": 0.4},
            "max_abs": 0.3,
        },
    }


def _all_cols(tasks: dict[str, dict]) -> list[str]:
    return [c for task in tasks.values() for c in task["cols"]]


def test_heatmap_default_range_and_labels():
    tasks = _tasks()
    fig = heatmap_figure(tasks, PRIMARY)
    ax = fig.axes[0]
    norm = ax.images[0].norm
    assert (norm.vmin, norm.vmax) == pytest.approx((-0.5, 0.5))
    assert [t.get_text() for t in ax.get_xticklabels()] == _all_cols(tasks)
    assert [t.get_text() for t in ax.get_yticklabels()] == PRIMARY_CLASSES
    assert ax.get_ylabel() == PRIMARY
    texts = [t.get_text() for t in ax.texts]
    assert "n/a" in texts  # the NaN cell
    assert "0.41" in texts and "-0.44" in texts
    assert any("not interpretable" in t and t.startswith("site") for t in texts)
    assert any(t.startswith("sex") and "p=0.012" in t for t in texts)
    assert not any(t.startswith("ga_bin") and "p=" in t for t in texts)
    assert fig.axes[1].get_ylabel() == "cos (projected)"  # the colour bar


def test_heatmap_range_expands_for_large_values():
    fig = heatmap_figure(_tasks(large=True), PRIMARY, title="epoch 3")
    norm = fig.axes[0].images[0].norm
    assert norm.vmax >= 0.8 and norm.vmin == pytest.approx(-norm.vmax)
    assert norm.vmax <= 0.85 + 1e-9


def test_heatmap_single_task_and_width_scales():
    one = {"site": _tasks()["site"]}
    small = heatmap_figure(one, PRIMARY)
    assert [t.get_text() for t in small.axes[0].get_xticklabels()] == ["A", "B"]
    wide_tasks = {f"t{i}": _tasks()["ga_bin"] for i in range(5)}  # 20 columns
    wide = heatmap_figure(wide_tasks, PRIMARY)
    assert wide.get_figwidth() > small.get_figwidth()


def test_heatmap_rejects_mismatched_rows():
    tasks = _tasks()
    tasks["site"] = dict(tasks["site"], rows=["x", "y", "z"])
    with pytest.raises(ValueError) as info:
        heatmap_figure(tasks, PRIMARY)
    # the message names the task whose rows differ, its rows and the primary classes every task must share
    assert str(info.value) == (f"task 'site' has rows ['x', 'y', 'z'], expected {PRIMARY_CLASSES} "
                               "(the primary classes)")


def test_save_figure_writes_png_atomically(tmp_path):
    path = tmp_path / "nested" / "dir" / "wsc_epoch003.png"
    save_figure(heatmap_figure(_tasks(large=True), PRIMARY), path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 200 and image.shape[1] > image.shape[0]  # wider than tall: 9 columns, 3 rows
    assert not list(path.parent.glob("*partial*"))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_save_figure_failure_leaves_nothing(tmp_path, monkeypatch):
    fig = heatmap_figure(_tasks(), PRIMARY)

    def broken_savefig(fname, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    path = tmp_path / "wsc.png"
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, path)
    assert list(tmp_path.iterdir()) == []


def _history(n_epochs: int, *, metrics: bool = True, null: bool = True) -> list[dict]:
    history = []
    for epoch in range(n_epochs):
        entry: dict = {
            "epoch": epoch,
            "tasks": {
                "sex": {
                    "max_abs": 0.2 + 0.1 * epoch,
                    "p": (0.5 / (epoch + 1) ** 3) if null else None,  # significant from epoch 2 on
                    "q05": 0.05 if null else None,
                    "q95": 0.25 if null else None,
                    "interpretable": True,
                },
                "site": {
                    "max_abs": 0.3,
                    "p": None,
                    "q05": None,
                    "q95": None,
                    "interpretable": None if epoch < n_epochs - 1 else False,  # only the last entry counts
                },
            },
        }
        if metrics:
            entry["metrics"] = {
                "train/loss": 1.0 / (epoch + 1),
                "val/loss": 1.2 / (epoch + 1),
                f"val/{PRIMARY}/auroc": 0.6 + 0.05 * epoch,
                f"train/{PRIMARY}/loss": 0.9,  # per-task loss: not drawn
                "val/sex/acc": 0.7,
            }
        history.append(entry)
    return history


def _wsc_axis(fig):
    return next(ax for ax in fig.axes if ax.get_title() == "WSC")


def _loss_axis(fig):
    return next(ax for ax in fig.axes if ax.get_title() == "Loss")


@pytest.mark.parametrize("n_epochs", [1, 4])
@pytest.mark.parametrize("metrics", [True, False])
@pytest.mark.parametrize("null", [True, False])
def test_history_figure(n_epochs, metrics, null):
    fig = history_figure(_history(n_epochs, metrics=metrics, null=null), PRIMARY)
    assert len(fig.axes) >= 2
    wsc = _wsc_axis(fig)
    assert len(wsc.lines) == 2  # one per task
    labels = [line.get_label() for line in wsc.lines]
    assert labels == ["sex", "site (not interpretable)"]
    assert wsc.lines[1].get_linestyle() == ":"
    assert all(len(line.get_xdata()) == n_epochs for line in wsc.lines)
    ticks = [t for t in wsc.get_xticks() if wsc.get_xlim()[0] <= t <= wsc.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    # filled markers only where p < alpha: "sex" is significant from epoch 2 when it has a null
    markers = [c for c in wsc.collections if isinstance(c, matplotlib.collections.PathCollection)]
    filled = [c for c in markers if len(c.get_facecolors()) and c.get_facecolors()[:, 3].max() > 0]
    assert sum(len(c.get_offsets()) for c in markers) == 2 * n_epochs
    assert sum(len(c.get_offsets()) for c in filled) == (n_epochs - 2 if null and n_epochs > 2 else 0)
    loss = _loss_axis(fig)
    assert loss.get_xlabel() == "epoch"
    if metrics:
        assert sorted(line.get_label() for line in loss.lines) == ["train/loss", "val/loss"]
        assert len(fig.axes) == 3  # the AUROC twin axis
        (auroc,) = fig.axes[2].lines
        assert auroc.get_label() == f"val/{PRIMARY}/auroc" and auroc.get_linestyle() == "--"
    else:
        assert len(loss.lines) == 0


def test_history_figure_saves(tmp_path):
    path = tmp_path / "wsc_history.png"
    save_figure(history_figure(_history(3), PRIMARY, alpha=0.1), path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(path).ndim == 3
    assert not list(tmp_path.glob("*partial*"))

