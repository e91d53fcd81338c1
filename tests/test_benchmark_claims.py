"""Paper claims judged under the one rule (benchmarks/claims.py)."""

import json

import numpy as np

from benchmarks import claims
from benchmarks import stats

# Per-seed offsets of every SoftSRV variant against hard prompting: mean
# 0.1, sample std about 0.7 (t about 0.3).
_WOBBLE = np.array([1.0, -0.6, 0.8, -0.6, -0.1])


def _softsrv_rows(shift, noise, seeds=5):
    rows = []
    for seed in range(seeds):
        for method in ("hard", "mc", "mpk", "nsp"):
            gain = 0.0 if method == "hard" else shift + noise * _WOBBLE[seed]
            rows.append(
                {
                    "domain": "code",
                    "method": method,
                    "seed": seed,
                    "mauve": 0.3 + gain,
                    "downstream_loss": 4.0 - gain,
                    "answer_accuracy": 0.0,
                }
            )
    return rows


def test_softsrv_sign_of_means_is_not_a_reproduction():
    # Every variant beats hard prompting by the sign of its mean, but the
    # seeds' noise is ten times the gap: the sign-only rule said
    # "reproduced"; under the one rule the claim is at most partly.
    rows = _softsrv_rows(shift=0.0, noise=0.2)
    records = claims.softsrv_records(rows, "softsrv_jax")
    beats = [r for r in records if r["claim"].startswith("every")]
    assert beats and all(r["verdict"] != stats.REPRODUCED for r in beats)
    (combined,) = [
        c for c in claims.combine(records) if c["claim"].startswith("every")
    ]
    assert combined["verdict"] != stats.REPRODUCED
    # 0% exact answers everywhere: at the floor, never a verdict.
    acc = [r for r in records if "answer_accuracy" in r["detail"]]
    assert acc and all(r["verdict"] == stats.NOT_TESTABLE for r in acc)
    # A clear gap on every seed is reproduced.
    rows = _softsrv_rows(shift=0.2, noise=0.01)
    records = claims.softsrv_records(rows, "softsrv_jax")
    beats = [
        r
        for r in records
        if r["claim"].startswith("every") and "accuracy" not in r["detail"]
    ]
    assert len(beats) == 6
    assert all(r["verdict"] == stats.REPRODUCED for r in beats)


def test_softsrv_three_seeds_are_not_testable():
    rows = _softsrv_rows(shift=0.2, noise=0.01, seeds=3)
    records = claims.softsrv_records(rows, "softsrv_jax")
    assert {r["verdict"] for r in records} == {stats.NOT_TESTABLE}


def test_laurel_share_of_an_insignificant_gain_is_not_testable():
    # The extra layer's gain is noise: no LAuReL row can be judged on it.
    base = [[0.1, 0.98], [0.1, 0.99], [0.1, 0.985], [0.1, 0.98], [0.1, 0.99]]
    deeper = [[0.1, 0.99], [0.1, 0.98], [0.1, 0.99], [0.1, 0.985], [0, 0.98]]
    laurel = [[0.1, 0.995]] * 5
    payload = {
        "per_seed": {
            "digits": {
                "baseline-N": {"values": base},
                "baseline-(N+1)": {"values": deeper},
                "RW": {"values": laurel},
            }
        }
    }
    records = claims.records_for("laurel_jax_digits_long", payload)
    gate, row = records
    assert gate["verdict"] != stats.REPRODUCED
    assert row["verdict"] == stats.NOT_TESTABLE


def test_reverdict_replaces_old_verdicts_and_is_idempotent(tmp_path):
    rows = _softsrv_rows(shift=0.2, noise=0.01)
    payload = {
        "environment": {},
        "meta": {},
        "tables": {"per-run results": rows, "verdicts per claim": [{}]},
    }
    (tmp_path / "softsrv_jax.json").write_text(json.dumps(payload))
    (tmp_path / "softsrv_jax.md").write_text(
        "# softsrv_jax\n\n## per-run results\n\n| a |\n\n"
        "## verdicts per claim\n\nreproduced\n\n## notes\n\n"
        "MC best: not reproduced.\n"
    )
    claims.reverdict("softsrv_jax", str(tmp_path))
    first = (tmp_path / "softsrv_jax.md").read_text()
    claims.reverdict("softsrv_jax", str(tmp_path))
    text = (tmp_path / "softsrv_jax.md").read_text()
    assert text == first
    assert text.count(claims.BEGIN) == 1
    assert "## verdicts per claim" not in text
    assert "MC best: not reproduced (old rule, superseded)." in text
    saved = json.loads((tmp_path / "softsrv_jax.json").read_text())
    assert "verdicts per claim" in saved["superseded_verdicts"]
    assert "verdicts per claim" not in saved["tables"]
    assert saved["verdicts_one_rule"]


def test_salt_weak_teacher_that_hurts_does_not_help_less():
    # The recorded means: baseline 4.643, SALT 4.581, weak teacher 4.718
    # (worse than no teacher). The old rule said "helps less: reproduced"
    # because 4.718 > 4.581; the weak teacher does not help at all.
    wobble = [0.0, 0.01, -0.01, 0.005, -0.005]
    ce = {"baseline": 4.643, "salt": 4.581, "salt_weak_teacher": 4.718}
    ce["salt_ds"], ce["kd_always"] = 4.593, 4.526
    rows = [
        {
            "variant": v,
            "seed": s,
            "final val CE": c + w,
            "step reaching baseline final": 105 if v != "baseline" else 120,
        }
        for v, c in ce.items()
        for s, w in enumerate(wobble)
    ]
    payload = {"tables": {"Per seed": rows}, "meta": {"steps": 120}}
    records = claims.records_for("salt_jax", payload)
    weak = [r for r in records if r["claim"] == "a weak teacher helps less"]
    assert [r["verdict"] for r in weak] == [
        stats.NOT_REPRODUCED,
        stats.REPRODUCED,
    ]
    (combined,) = [
        c
        for c in claims.combine(records)
        if c["claim"] == "a weak teacher helps less"
    ]
    # Significantly worse than no teacher is the opposite of "helps":
    # the claim is not reproduced, not "partly" (issue 28 item 1).
    assert combined["verdict"] == stats.NOT_REPRODUCED
    assert weak[0]["opposite_significant"]
    # 105 of 120 steps is a 12.5% saving against the paper's ~30%.
    steps = [r for r in records if r["claim"].startswith("SALT reaches")]
    assert {r["verdict"] for r in steps} == {stats.PARTLY}


def test_looped_reasoning_failed_seed_is_not_a_partial_win():
    # Addition n=2 as recorded: 1x1 97.3 on average beats 1x4 72.2 (one of
    # its seeds failed); the old rule called the ordering "partly
    # reproduced". With five seeds the one rule says "not reproduced".
    acc = {"1x1": [97, 98, 97, 97.5, 97], "1x4": [99.8, 16.5, 99.9, 99, 46]}
    rows = [
        {"model": m, "seed": s, "acc n=2": v}
        for m, values in acc.items()
        for s, v in enumerate(values)
    ]
    payload = {"tables": {"addition: every seed": rows}}
    (record,) = claims.records_for("looped_reasoning_jax", payload)
    assert record["detail"] == "addition acc n=2: 1x4 vs 1x1"
    assert record["verdict"] == stats.NOT_REPRODUCED


def _salt_payload():
    rows = [
        {
            "variant": v,
            "seed": s,
            "final val CE": c + 0.01 * s,
            "step reaching baseline final": 80 if v != "baseline" else 120,
        }
        for v, c in {
            "baseline": 4.6,
            "salt": 4.5,
            "salt_ds": 4.5,
            "salt_weak_teacher": 4.55,
            "kd_always": 4.6,
        }.items()
        for s in range(5)
    ]
    return {"environment": {}, "tables": {"Per seed": rows}, "meta": {}}


def test_readme_table_links_from_the_repository_root(tmp_path, capsys):
    payload = _salt_payload()
    payload["meta"]["steps"] = 120
    (tmp_path / "salt_jax.json").write_text(json.dumps(payload))
    (tmp_path / "salt_jax.md").write_text("# salt_jax\n")
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert claims.main(["--results", str(tmp_path), "--readme"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "| paper | claim | paper's number | ours | verdict | results |"
    )
    body = [line for line in lines[2:] if line]
    # One row per claim: steps, weak teacher, KD off.
    assert len(body) == 3
    assert all(
        line.endswith("| [salt_jax](benchmarks/results/salt_jax.md) |")
        for line in body
    )
    steps = [line for line in body if "fewer steps" in line][0]
    assert "~70% of the steps" in steps and "arXiv 2410.18779" in steps
    # --readme writes nothing.
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_claims_only_leaves_results_files_alone(tmp_path):
    payload = _salt_payload()
    payload["meta"]["steps"] = 120
    (tmp_path / "salt_jax.json").write_text(json.dumps(payload))
    (tmp_path / "salt_jax.md").write_text("# salt_jax\n")
    claims.main(["--results", str(tmp_path), "--claims-only"])
    assert (tmp_path / "salt_jax.md").read_text() == "# salt_jax\n"
    text = (tmp_path / "CLAIMS.md").read_text()
    assert "[salt_jax](salt_jax.md)" in text


def test_every_recorded_claim_has_the_papers_number_or_says_not_stated():
    records = claims.collect(claims.RESULTS_DIR, rewrite=False)
    assert records
    for r in records:
        number = r["paper_number"]
        assert number.startswith(claims.NOT_STATED) or "(" in number, r
        assert (
            "arXiv" in number
            or "ICLR" in number
            or ("implementation" in number)
        ), r
    # LAuReL's two parts anchor to different tables of the paper.
    laurel = {
        r["result"]: r["paper_number"]
        for r in records
        if r["claim"].startswith("(precondition)")
    }
    assert "ImageNet" in laurel["laurel_jax_digits"]
    assert "C4" in laurel["laurel_jax_lm"]


def _lora_quality(rite_losses, adam_losses):
    seeds = list(range(len(rite_losses)))
    table = [
        {
            "optimizer": name,
            "seeds": seeds,
            "loss_mean": float(np.mean(losses)),
            "loss_per_seed": losses,
        }
        for name, losses in (("lora_rite", rite_losses), ("adam", adam_losses))
    ]
    title = "Held-out quality at equal steps (best lr per optimizer)"
    return {"tables": {title: table}}


def test_lora_rite_per_seed_losses_are_judged_paired():
    # LoRA-RITE lower on every seed by 0.1 +- a little: reproduced; the
    # same gap in Adam's favour: not reproduced (the opposite direction).
    adam = [3.0, 3.2, 2.9, 3.1, 3.05]
    rite = [a - 0.1 + 0.01 * w for a, w in zip(adam, _WOBBLE)]
    (rec,) = claims.records_for("lora_rite_jax", _lora_quality(rite, adam))
    assert rec["n"] == 5 and rec["verdict"] == stats.REPRODUCED
    (rec,) = claims.records_for("lora_rite_jax", _lora_quality(adam, rite))
    assert rec["verdict"] == stats.NOT_REPRODUCED


def test_lora_rite_cost_reads_the_mean_step():
    rows = [
        {"optimizer": "adam", "mean_s_ratio": 1.0},
        {
            "optimizer": "lora_rite",
            "mean_s_ratio": 1.25,
            "median_s_ratio": 1.1,
            "worst_s_ratio": 2.0,
        },
    ]
    payload = {"tables": {"Step time and optimizer state vs Adam": rows}}
    (rec,) = claims.records_for("lora_rite_cost_jax", payload)
    assert rec["ours"].startswith("mean step 1.25x")
    assert rec["verdict"] == stats.NOT_TESTABLE


def test_looped_compile_with_repeats_is_no_longer_a_single_timing():
    def rows(repeats):
        return [
            {
                "mode": "scan",
                "loops L": loops,
                "StableHLO lines": 100,
                "lower + compile s": 1.0,
                **({"repeats": repeats} if repeats else {}),
            }
            for loops in (1, 8, 64)
        ]

    title = "forward pass: program size vs loops"
    (old,) = claims.records_for(
        "looped_compile_jax", {"tables": {title: rows(0)}}
    )
    (new,) = claims.records_for(
        "looped_compile_jax", {"tables": {title: rows(3)}}
    )
    assert "timed once per L" in old["reason"]
    assert "mean of >= 3 full compiles" in new["reason"]


def _regression_rows(one_sided, full_matrix, role="confirm"):
    rows = []
    for seed, (a, b) in enumerate(zip(one_sided, full_matrix), start=1):
        for method, value in (
            ("one-sided Shampoo", a),
            ("full-matrix AdaGrad", b),
            ("diagonal AdaGrad", b + 1.0),
            ("Adam", -30.0),
        ):
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "role": role,
                    "log10_final_over_f0": value,
                }
            )
    return {"tables": {"per-seed results": rows}}


def test_shampoo_regression_is_judged_on_the_fresh_problems():
    full = [-5.0, -4.5, -5.5, -4.8, -5.2]
    payload = _regression_rows([-30.0] * 5, full)
    records = claims.records_for("shampoo_regression_jax", payload)
    by_peer = {r["detail"].rsplit(" vs ", 1)[1]: r for r in records}
    assert by_peer["full-matrix AdaGrad"]["verdict"] == stats.REPRODUCED
    # Adam clipped at the same floor as one-sided Shampoo: not testable.
    assert by_peer["Adam"]["verdict"] == stats.NOT_TESTABLE
    # Only the tuning problem's rows: nothing to judge.
    tuning_only = _regression_rows([-30.0] * 5, full, role="tuning")
    (rec,) = claims.records_for("shampoo_regression_jax", tuning_only)
    assert rec["verdict"] == stats.NOT_TESTABLE
    # The opposite direction is not a reproduction.
    payload = _regression_rows(full, [-30.0] * 5)
    records = claims.records_for("shampoo_regression_jax", payload)
    assert records[0]["verdict"] == stats.NOT_REPRODUCED


def test_curation_pairs_each_embedder_with_random_by_seed():
    random = [4.0, 4.2, 3.9, 4.1, 4.05]
    rows = []
    for seed, r in enumerate(random):
        for name, value in (
            ("random", r),
            ("random (floor)", r - 0.02 + 0.001 * _WOBBLE[seed]),
            ("mean token embedding", r - 0.05 + 0.002 * _WOBBLE[seed]),
            ("mean last hidden state", r - 0.05 + 0.002 * _WOBBLE[seed]),
            ("hashed n-grams", r + 0.01 * _WOBBLE[seed]),
        ):
            rows.append({"embedder": name, "seed": seed, "val_natural": value})
    payload = {"tables": {"Curation quality per seed": rows}}
    records = claims.records_for("curation_jax", payload)
    assert len(records) == 6
    words = {r["detail"]: r["verdict"] for r in records}
    vs_random = "natural validation loss: {} vs random"
    assert words[vs_random.format("mean token embedding")] == stats.REPRODUCED
    # No gain on average (wobble only): not a reproduction.
    assert words[vs_random.format("hashed n-grams")] != stats.REPRODUCED
    combined = {c["claim"]: c["verdict"] for c in claims.combine(records)}
    claim = "balanced selection on every embedder beats random selection"
    assert combined[claim] == stats.PARTLY
    # A results file without per-seed rows is not judged.
    assert claims.records_for("curation_jax", {"tables": {}}) == []


def test_looped_icl_claims_come_from_the_recorded_paired_rows():
    base = [-2.0, -2.1, -1.9, -2.05, -1.95]
    row = {
        "claim": "Looped models keep lowering the loss past the training depth",
        "comparison": "looped_restricted: 8 loops vs 4",
        "direction": -1,
        "baseline_per_seed": base,
        "method_per_seed": [b - 0.1 + 0.01 * w for b, w in zip(base, _WOBBLE)],
    }
    title = "Paired comparisons (per seed, log10 normalised test loss)"
    payload = {"tables": {title: [row]}, "meta": {}}
    (rec,) = claims.records_for("looped_icl_jax", payload)
    assert rec["verdict"] == stats.REPRODUCED
    assert rec["detail"] == row["comparison"]
    # A run from before the paired rows: not testable, whatever it said.
    old = {"tables": {}, "meta": {"seeds_used": [0, 1, 2]}}
    old["verdicts"] = [{"claim": row["claim"], "status": "reproduced"}]
    (rec,) = claims.records_for("looped_icl_jax", old)
    assert rec["verdict"] == stats.NOT_TESTABLE
