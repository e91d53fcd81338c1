"""The LatentCRF benchmark's pure pieces (`benchmarks/latent_crf.py`)."""

import json

import numpy as np
import pytest

from benchmarks import harness
from benchmarks import latent_crf as lc


def test_ablations_argument():
    assert lc.parse_args([]).ablations == []
    assert lc.parse_args(["--ablations", "all"]).ablations == list(lc.ABLATIONS)
    args = lc.parse_args(["--ablations", "s2,,input_zt", "--seeds", "3"])
    assert args.ablations == ["s2", "input_zt"]
    assert harness.seeds_of(args) == [3]
    with pytest.raises(ValueError, match="--ablations"):
        lc.parse_args(["--ablations", "s3"])


def _rows(method, fd, acc, vendi):
    return [
        {
            "seed": seed,
            "method": method,
            "frechet_distance": fd + 0.01 * noise,
            "class_accuracy": acc + 0.001 * noise,
            "vendi": vendi + 0.01 * noise,
        }
        for seed, noise in enumerate([0.3, -0.5, 0.1, 0.4, -0.2])
    ]


def test_comparison_words_come_from_paired_intervals():
    crf = _rows("crf", 3.0, 0.9, 2.0)
    peer = _rows("short", 4.0, 0.8, 2.0)
    comparison = lc._compare(crf, peer)
    assert comparison["frechet_distance"][0] == "better than"
    assert comparison["class_accuracy"][0] == "better than"
    assert comparison["vendi"][0] == "not distinguishable from"
    assert lc._words(comparison) == "FD better, acc better, Vendi n.s."
    assert lc._words(lc._compare(peer, crf)) == (
        "FD worse, acc worse, Vendi n.s."
    )
    # Rows are paired by seed, whatever their order.
    assert lc._compare(crf[::-1], peer) == comparison


def test_sampler_and_cost_rows():
    per_seed = _rows("full", 3.0, 0.9, 2.0) + _rows("crf", 3.5, 0.9, 1.9)
    for r in per_seed:
        r["denoiser_calls"] = 12 if r["method"] == "full" else 8
    summary = {m: lc._summary(lc._of(per_seed, m)) for m in ("full", "crf")}
    real = {"frechet_distance": 0.5, "class_accuracy": 1.0, "vendi": 3.0}
    rows = lc.sampler_rows(real, summary, per_seed, ["full", "crf"])
    assert [r["method"] for r in rows] == ["real test images", "full", "crf"]
    assert list(rows[1]) == [
        "method",
        "denoiser_calls",
        "crf_calls",
        *lc.METRICS,
    ]
    assert [r["crf_calls"] for r in rows] == [0, 0, 1]
    assert rows[2]["denoiser_calls"] == 8

    class Pipe:
        def cost_table(self):
            return {
                "denoiser_params": 100,
                "denoiser_flops": 10.0,
                "crf_params": 5,
                "crf_flops": 2.0,
            }

    costs = lc.cost_rows(Pipe(), 12, 4)
    assert costs[-1]["flops_per_sample"] == pytest.approx((8 * 10 + 2) / 120)
    assert np.isnan(costs[-1]["params"])


def test_timing_columns():
    t = {"mean": 2.0, "median": 1.5, "worst": 4.0, "rounds": [1.0]}
    assert harness.timing_columns(t, "run_s") == {
        "run_s": 2.0,
        "run_s_median": 1.5,
        "run_s_worst": 4.0,
    }
    assert list(harness.timing_columns(t, "s", "median_s", "worst_s")) == [
        "s",
        "median_s",
        "worst_s",
    ]


def test_partial_record_is_written_then_removed(monkeypatch, tmp_path):
    monkeypatch.setattr(harness, "RESULTS_DIR", str(tmp_path))
    path = tmp_path / "latent_crf_x_partial.json"
    harness.write_partial("latent_crf_x", {"rows": [np.float32(1.5)]})
    assert json.loads(path.read_text()) == {"rows": [1.5]}
    harness.write_partial("latent_crf_x", None)
    assert not path.exists()
    harness.write_partial("latent_crf_x", None)  # nothing to remove


def test_range_curve_rows():
    rows = lc.range_curve(
        grid=4, channels=1, batch=1, rounds=1, max_dense=1, compiles=1
    )
    assert [(r["links"], r["range"]) for r in rows] == [
        ("dilated", 1),
        ("dense", 1),
        ("dilated", 2),
    ]
    assert rows[0]["run_s_ratio"] == 1.0
    for r in rows:
        assert r["compile_s"] == r["first_call_s"] - r["run_s"]
        assert r["first_call_s_worst"] >= r["first_call_s_median"]
