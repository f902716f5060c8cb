"""benchmarks/gpu_throughput.py runs end to end (its --smoke mode: every arm, tiny, on the CPU)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_throughput.py"


@pytest.mark.slow
def test_gpu_throughput_smoke_run_measures_every_arm(tmp_path):
    out = tmp_path / "result.json"
    with pytest.MonkeyPatch.context() as patch:  # as `python gpu_throughput.py --smoke`, in this process
        patch.chdir(tmp_path)
        patch.setattr(sys, "argv", [str(SCRIPT), "--smoke", "--out", str(out)])
        runpy.run_path(str(SCRIPT), run_name="__main__")
    result = json.loads(out.read_text())
    assert [(a["model"], a["compile"]) for a in result["throughput"]] == [("sononet16", False)]
    assert [a["loader"] for a in result["loader"]] == ["device-resident", "cpu loader, 0 workers",
                                                       "cpu loader, 1 workers"]
    assert all(a["images_per_s"] > 0 for a in result["throughput"] + result["loader"])
    callback = result["callback"]
    assert callback["callback_s"] > 0 and 0 < callback["share_of_epoch"] < 1
    assert set(callback["parts_s"]) == {"embed", "analysis", "files", "waited"}
    assert callback["blocking_over_embedding"] >= 1.0
