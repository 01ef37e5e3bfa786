"""Claims, multiplicity, power, censoring and n=1 formatting of the generated reports (golden values by hand)."""
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmark.suites.kd  # noqa: F401  (registers the suites)
import benchmark.suites.ovd  # noqa: F401
from scipy import integrate, stats

from benchmark.claims import Arm, Claim, evaluate_family, holm, tost_paired
from benchmark.metric_summaries import describe, describe_censored, summary_rows
from benchmark.power import sign_test_seeds_needed, tost_seeds_needed, ttest_power, ttest_seeds_needed
from benchmark.registry import REGISTRY
from benchmark.report import report_markdown
from benchmark.summary import INSENSITIVE, load_suite, per_cell_timings, summary_markdown
from benchmark.results import COLUMNS

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _frame(rows):
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["epoch"] = frame["epoch"].astype("Int64")
    return frame


def test_holm_golden_values_and_nan_left_out():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(0.06, 1 * 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, 0.04, 0.03, math.nan])[3])


def test_seeds_for_80_percent_power():
    # differences 0, 1, 2: Cohen's d = 1 -> a paired t-test needs 10 seeds (power 0.748 at 9, 0.803 at 10)
    assert ttest_seeds_needed(np.array([0.0, 1.0, 2.0]), 0.05) == 10
    assert math.isinf(ttest_seeds_needed(np.array([-1.0, 0.0, 1.0]), 0.05))
    # always wins: the two-sided sign test needs 2 * 0.5^m < 0.05, i.e. m = 6 (0.031), not 5 (0.0625)
    assert sign_test_seeds_needed(3, 0, 3, 0.05) == 6
    assert math.isinf(sign_test_seeds_needed(1, 1, 3, 0.05))


# DN-DAB-DETR's cross-attention neg-entropy, last − first epoch, committed seeds 0-4 (Cohen's d 2.779), at the Holm
# level 0.05 / 15 it faced in a family of 15: statsmodels' TTestPower().power is NaN at n = 6, 7, 9, ..., so a scan
# that skipped NaNs answered 8
REVIEW_DIFFS = np.array([0.823707024, 0.910160462, 0.446620941, 0.404685497, 0.561107476])


def _power_by_integration(d: float, n: int, alpha: float) -> float:
    """P(|T| > c) for T = (Z + d√n) / √(V / df), V ~ χ²(df): each tail integrated over V (independent of scipy's
    noncentral t)."""
    df, nc = n - 1, d * math.sqrt(n)
    c = stats.t.isf(alpha / 2, df)
    tail = lambda sign: integrate.quad(  # noqa: E731
        lambda v: stats.norm.sf(c * math.sqrt(v / df) - sign * nc) * stats.chi2.pdf(v, df), 0, np.inf)[0]
    return tail(1) + tail(-1)


def test_power_search_is_robust_where_the_noncentral_t_cdf_is_nan():
    d = REVIEW_DIFFS.mean() / REVIEW_DIFFS.std(ddof=1)
    alpha = 0.05 / 15
    power = ttest_power(d, np.arange(2, 10_001), alpha)
    assert not np.isnan(power).any()
    for n in (5, 6):  # 0.576 at 5, 0.830 at 6: six seeds, not eight
        assert power[n - 2] == pytest.approx(_power_by_integration(d, n, alpha), abs=1e-6)
    assert power[3] < 0.8 <= power[4]
    assert ttest_seeds_needed(REVIEW_DIFFS, alpha) == 6


def test_tost_golden_values():
    a, b = np.array([1.01, 1.02, 1.03]), np.ones(3)  # differences 0.01, 0.02, 0.03: mean 0.02, se 0.01 / √3
    # upper one-sided test: t = (0.02 − 0.05) / 0.005774 = −5.196, df 2 → p = 0.017549; the lower one's
    # t = (0.02 + 0.05) / 0.005774 = 12.124 → p = 0.003367; TOST p = the larger
    assert tost_paired(a, b, 0.05) == pytest.approx(0.017549, abs=1e-6)
    # δ 0.01 below the mean: the upper test's t = (0.02 − 0.01) / 0.005774 = +1.732 → p = P(T < 1.732) = 0.887
    assert tost_paired(a, b, 0.01) == pytest.approx(0.887298, abs=1e-6)
    assert tost_seeds_needed(np.array([0.01, 0.02, 0.03]), 0.05, 0.05) == 3
    assert math.isinf(tost_seeds_needed(np.array([0.05, 0.06, 0.07]), 0.05, 0.05))  # the effect is outside ±δ
    # one primary claim: its t-test p 0.0742 and its TOST p 0.0175 are one decision (disjoint nulls), so a family of
    # one claim leaves both as they are
    frame = _frame([("s", m, seed, None, "test", "acc", v) for m, values in (("a", a), ("b", b))
                    for seed, v in enumerate(values)])
    t = evaluate_family(frame, [Claim("c", "a − b", Arm("a", "acc", "test"), Arm("b", "acc", "test"),
                                      role="primary", expected="higher", delta=0.05)])["c"]
    assert t.p_holm == pytest.approx(0.07418, abs=1e-4) and t.p_tost_holm == pytest.approx(0.017549, abs=1e-5)
    assert t.direction == "equivalent" and t.verdict() == "equivalent within ±0.05"
    assert (t.higher_seeds, t.lower_seeds) == (3, 0)


def test_at_most_four_primary_claims():
    claims = [Claim(f"c{i}", "", Arm("a", "acc", "test"), Arm("b", "acc", "test"), role="primary") for i in range(5)]
    with pytest.raises(ValueError, match="at most 4"):
        evaluate_family(_frame([]), claims)


def _censored_frame():
    rows = []
    for method, reached in (("a", [3.0, math.nan]), ("b", [math.nan, math.nan])):
        for seed, value in enumerate(reached):
            rows += [("s", method, seed, e, "val", "AP50", 0.1 * e) for e in range(1, 5)]
            rows.append(("s", method, seed, None, "test", "epochs_to_target", value))
    return _frame(rows)


def test_censored_metric_is_reported_and_compared_as_censored():
    frame = _censored_frame()
    assert describe_censored(frame, "b", "epochs_to_target", "test") == \
        ">4 epochs on 2 of 2 seeds (never within 4 epochs)"
    assert describe_censored(frame, "a", "epochs_to_target", "test") == \
        "reached at epoch 3 (1 of 2 seeds); >4 epochs on 1 of 2 seeds (never within 4 epochs)"
    claim = Claim("t", "a vs b", Arm("a", "epochs_to_target", "test"), Arm("b", "epochs_to_target", "test"), True)
    t = evaluate_family(frame, [claim])["t"]
    assert (t.wins, t.losses, t.n) == (1, 0, 2)
    # one untied seed of two: the sign test's smallest attainable p is 2 · 0.5¹ = 1, so it is not used
    assert t.min_p == 1.0 and math.isnan(t.p) and t.direction == "not used"
    assert "smallest attainable p with 1 untied of 2 seeds is 1" in t.verdict()


def test_sign_test_is_used_from_six_seeds():
    rows = [("s", m, seed, None, "test", "epochs_to_target", value)
            for seed in range(6) for m, value in (("a", 2.0), ("b", math.nan))]
    claim = Claim("t", "a vs b", Arm("a", "epochs_to_target", "test"), Arm("b", "epochs_to_target", "test"), True)
    t = evaluate_family(_frame(rows), [claim])["t"]
    assert t.min_p == pytest.approx(0.03125) and t.p == pytest.approx(0.03125) and t.direction == "earlier"


def test_trend_arms_take_each_seeds_first_and_last_epoch():
    frame = _censored_frame()
    last = Arm("a", "AP50", "val", "last").values(frame)
    first = Arm("a", "AP50", "val", "first").values(frame)
    assert last.tolist() == pytest.approx([0.4, 0.4]) and first.tolist() == pytest.approx([0.1, 0.1])
    t = evaluate_family(frame, [Claim("t", "trend", Arm("a", "AP50", "val", "last"), Arm("a", "AP50", "val", "first"))])
    assert t["t"].diff == pytest.approx(0.3) and t["t"].p == 0.0 and t["t"].direction == "higher"


def test_one_seed_prints_n1_not_nan():
    frame = _frame([("s", "a", 0, None, "test", "acc", 0.5), ("s", "b", 0, None, "test", "acc", 0.25)])
    assert describe(summary_rows(frame), "a", "acc", "test") == "0.500, n=1"
    t = evaluate_family(frame, [Claim("c", "a − b", Arm("a", "acc", "test"), Arm("b", "acc", "test"))])["c"]
    assert t.line() == "Δ +0.250, n=1 (one seed: no test)"
    assert "nan" not in summary_markdown(REGISTRY.suite("kd"), frame.assign(suite="kd"), None, {})


def test_per_epoch_timings_are_summed_per_cell_and_rates_averaged():
    timings = _frame([("s", "a", 0, 1, "train", "train_seconds", 1.0), ("s", "a", 0, 2, "train", "train_seconds", 2.5),
                      ("s", "a", 0, 1, "train", "train_images_per_second", 100.0),
                      ("s", "a", 0, 2, "train", "train_images_per_second", 200.0),
                      ("s", "a", 0, None, "test", "seconds_per_image", 0.01)])
    cells = per_cell_timings(timings).set_index("metric")["value"]
    assert cells.to_dict() == {"seconds_per_image": 0.01, "train_seconds, all epochs": 3.5,
                               "train_images_per_second, mean over epochs": 150.0}
    assert per_cell_timings(timings).iloc[1:]["epoch"].isna().all()


def _render(suite_dir: Path, suite: str) -> str:
    frame, timings, run = load_suite(suite_dir)
    return summary_markdown(REGISTRY.suite(suite), frame, timings, run)


def _swap(path: Path, a: str, b: str, metric: str) -> None:
    frame = pd.read_csv(path)
    rows = frame["metric"] == metric
    ia, ib = rows & (frame["method"] == a), rows & (frame["method"] == b)
    va, vb = frame.loc[ia, "value"].to_numpy().copy(), frame.loc[ib, "value"].to_numpy().copy()
    frame.loc[ia, "value"], frame.loc[ib, "value"] = vb, va
    frame.to_csv(path, index=False)


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_swapping_two_methods_in_metrics_csv_swaps_their_numbers_and_verdicts(tmp_path):
    suite_dir = tmp_path / "kd"
    shutil.copytree(RESULTS / "kd", suite_dir, ignore=shutil.ignore_patterns("figures", "*.md"))
    before = _render(suite_dir, "kd")
    _swap(suite_dir / "metrics.csv", "logit_kd", "gld", "top1_last")
    after = _render(suite_dir, "kd")
    frame = load_suite(suite_dir)[0]
    rows = summary_rows(frame)
    # the numbers: each method's line now quotes the other's old top-1
    for m, other in (("logit_kd", "gld"), ("gld", "logit_kd")):
        old = _line(before, f"- `{other}` top-1 (last epoch) ").split(";")[0].split("(last epoch) ")[1]
        assert _line(after, f"- `{m}` top-1 (last epoch) ").split(";")[0].split("(last epoch) ")[1] == old
        assert describe(rows, m, "top1_last", "test") == old
    # the claims: gld − logit_kd flips sign, and each method's comparison with the student is the other's
    flip_before = _line(before, "| `gld` − `logit_kd` test top-1 (last epoch) |").split("|")[2].strip()
    flip_after = _line(after, "| `gld` − `logit_kd` test top-1 (last epoch) |").split("|")[2].strip()
    assert float(flip_after) == pytest.approx(-float(flip_before), abs=1e-3)
    for m, other in (("logit_kd", "gld"), ("gld", "logit_kd")):
        cols_after = _line(after, f"| `{m}` − `student_baseline`").split("|")[2:5]
        cols_before = _line(before, f"| `{other}` − `student_baseline`").split("|")[2:5]
        assert cols_after == cols_before  # Δ, CI and raw p move with the values
    # unaffected numbers stay put
    for unchanged in ("- `fitnet` top-1 (last epoch) ", "- Teacher test top-1 "):
        assert _line(after, unchanged).split(";")[0] == _line(before, unchanged).split(";")[0]
    assert before != after


def test_swapping_regionclip_and_clip_crop_flips_the_verdicts(tmp_path):
    suite_dir = tmp_path / "ovd"
    shutil.copytree(RESULTS / "ovd", suite_dir, ignore=shutil.ignore_patterns("figures", "*.md"))
    before = _render(suite_dir, "ovd")
    claim = "- `regionclip` − `clip_crop` AP50 on novel classes"
    _swap(suite_dir / "metrics.csv", "regionclip", "clip_crop", "AP50")
    after = _render(suite_dir, "ovd")
    delta = {text: float(re.search(r"Δ ([+-]?\d+\.\d+)", _line(text, claim)).group(1)) for text in (before, after)}
    assert delta[after] == pytest.approx(-delta[before], abs=1e-3)  # the swapped values reverse the difference
    verdict = {text: _line(text, claim).rsplit(": ", 1)[-1].split(" ")[0].rstrip(".") for text in (before, after)}
    # the raw p is unchanged and the family's others move, so Holm may change the significance — never the direction
    assert {verdict[before], verdict[after]} <= {"higher", "lower", "inconclusive"}
    assert "inconclusive" in (verdict[before], verdict[after]) or verdict[after] != verdict[before]
    assert before != after


def test_methods_at_chance_or_never_at_target_are_flagged():
    from benchmark.registry import Floor, SuiteSpec
    from benchmark.summary import floor_lines

    spec = SuiteSpec(name="floors", question="q", dataset="none", config={}, profiles={},
                     floors=(Floor("top1", "test", ("chance", "test")), Floor("epochs", "test")))
    rows = []
    for seed, (good, weak, reached) in enumerate([(0.8, 0.12, 3.0), (0.7, 0.08, float("nan")), (0.9, 0.13, 4.0)]):
        for method, top1, epochs in (("good", good, reached), ("weak", weak, float("nan"))):
            rows += [{"suite": "floors", "method": method, "seed": seed, "epoch": None, "split": "test",
                      "metric": metric, "value": value}
                     for metric, value in (("top1", top1), ("chance", 0.1), ("epochs", epochs))]
    lines = floor_lines(spec, pd.DataFrame(rows, columns=COLUMNS))
    # weak: mean 0.110, sd 0.0265, 95% t-interval 0.110 ± 4.303·0.0265/√3 = [0.044, 0.176] reaches chance 0.1;
    # good: [0.552, 1.048] is clear; good reaches its target on 2 of 3 seeds (flagged only when on none)
    assert lines == [
        "**`weak` is not clearly above chance**: top1[test] 0.110 ± 0.026 [0.044, 0.176], n=3 against chance 0.100; "
        "comparisons with it say little about what it stands for.",
        "**`weak` never reaches its target**: epochs[test] is censored on all 3 seeds (not reached within the run); "
        "comparisons with it are with a method that has not converged."]


def _set_from(path: Path, method: str, metric: str, split: str, source: str, shift) -> None:
    """Make (method, metric, split) of metrics.csv equal ``source``'s value on the same seed plus ``shift(seed)``."""
    frame = pd.read_csv(path)
    final = frame["epoch"].isna() & (frame["metric"] == metric) & (frame["split"] == split)
    base = frame[final & (frame["method"] == source)].set_index("seed")["value"]
    rows = final & (frame["method"] == method)
    frame.loc[rows, "value"] = [base[s] + shift(s) for s in frame.loc[rows, "seed"]]
    frame.to_csv(path, index=False)


def _results_copy(tmp_path: Path) -> Path:
    for suite in ("detr", "kd", "ovd"):
        # without sensitivity.csv: a perturbed metric would face the committed sweep's verdicts
        shutil.copytree(RESULTS / suite, tmp_path / suite,
                        ignore=shutil.ignore_patterns("figures", "*.md", "sensitivity.csv"))
    return tmp_path


def _suite_part(report: str, suite: str) -> str:
    start = report.index(f"## Suite `{suite}`")
    return report[start:report.index("\n## ", start + 1)]


def _table_row(report: str, claim: str) -> str:
    return _line(report, next(line for line in report.splitlines() if line.startswith("| [") and claim in line))


def _verdict(row: str) -> str:
    return row.split(" | ")[2].strip("*").split("**")[0]


def _source(row: str) -> str:
    return row.split(" | ")[5].strip(" |")


@pytest.mark.parametrize("suite, method, metric, split, source, effect", [
    ("kd", "logit_kd", "top1_last", "test", "student_baseline", 0.1),  # logit KD above the student alone...
    ("ovd", "clip_crop", "zs_top1", "all", "clip_roi", -0.3)])  # crops below RoIAlign (and below whole images)
def test_a_failed_control_opens_the_suite_report_with_the_insensitivity_warning(tmp_path, suite, method, metric,
                                                                                 split, source, effect):
    results = _results_copy(tmp_path)
    path = results / suite / "metrics.csv"
    _set_from(path, method, metric, split, source, lambda seed: effect + 0.01 * seed)  # the controls hold
    holds = report_markdown(results)
    banner = f"**{INSENSITIVE[0].upper()}{INSENSITIVE[1:]}**"
    assert banner not in _suite_part(holds, suite) and banner not in _render(results / suite, suite)
    _set_from(path, method, metric, split, source, lambda seed: 0.0)  # ...or equal to it: the control fails
    fails = report_markdown(results)
    part = _suite_part(fails, suite)
    assert part.split("\n\n")[1].startswith(banner)  # right under the suite's heading
    assert _render(results / suite, suite).split("\n\n")[2].startswith(banner)  # under the title and question
    assert "not shown" in _verdict(_table_row(fails, f"`{suite}` positive controls"))


@pytest.mark.parametrize("suite, row, method, metric, split, source", [
    ("ovd", "RegionCLIP beats RoIAlign CLIP: zs_top1 on novel classes", "regionclip", "zs_top1", "novel",
     "clip_roi"),
    ("kd", "GLD beats logit KD", "gld", "top1_last", "test", "logit_kd")])
def test_perturbing_metrics_flips_the_first_table_row(tmp_path, suite, row, method, metric, split, source):
    results = _results_copy(tmp_path)
    path = results / suite / "metrics.csv"
    verdicts = {}
    for sign in (1, -1):  # a clear, seed-consistent effect each way
        _set_from(path, method, metric, split, source, lambda seed: sign * (0.05 + 0.005 * seed))
        report = report_markdown(results)
        header = report.index("| Q | claim | verdict | Δ [95% CI] | n | from |")
        assert header < report.index("## Suite")  # on the first screen
        verdicts[sign] = _verdict(_table_row(report, row))
    assert verdicts == {1: "reproduced", -1: "contradicted"}


def _plan_for(folder: Path) -> dict:
    """A plan whose seeds, methods, profile and config are exactly those of the run in ``folder``."""
    run = json.loads((folder / "run.json").read_text())
    return {"suite": run["suite"], "seeds": run["seeds"], "n": len(run["seeds"]), "methods": run["methods"],
            "profile": run["profile"], "config_hash": run["config_hash"]}


def test_the_headline_is_the_planned_confirmation_only_where_it_is_exactly_its_plan(tmp_path):
    results = _results_copy(tmp_path)
    fresh = results / "confirmation" / "kd"
    shutil.copytree(results / "kd", fresh)
    (fresh / "plan.json").write_text(json.dumps(_plan_for(fresh)))
    row = "GLD beats logit KD"
    _set_from(results / "kd" / "metrics.csv", "gld", "top1_last", "test", "logit_kd", lambda seed: (-1) ** seed * 0.01)
    _set_from(fresh / "metrics.csv", "gld", "top1_last", "test", "logit_kd", lambda seed: -0.05 - 0.005 * seed)
    report = report_markdown(results)
    line = _table_row(report, row)
    assert _verdict(line) == "contradicted" and _source(line) == "confirmation"
    section = report[report.index('<a id="kd-b2">'):]
    assert "- confirmation: **contradicted**" in section and "- development (seeds 0-4): **inconclusive**" in section
    frame = pd.read_csv(fresh / "metrics.csv")
    frame[frame["seed"] != 4].to_csv(fresh / "metrics.csv", index=False)  # a seed short of its plan
    report = report_markdown(results)
    assert _source(_table_row(report, row)) == "development"
    assert "not decided from: it is not its plan (`student_baseline` has 4 of the plan's 5 seeds" in report


def test_staged_reruns_head_a_row_only_without_a_confirmation_and_are_marked(tmp_path):
    results = _results_copy(tmp_path)
    staged = results / "exploratory" / "staged-confirmation" / "kd"
    shutil.copytree(results / "kd", staged)
    _set_from(staged / "metrics.csv", "gld", "top1_last", "test", "logit_kd", lambda seed: 0.05 + 0.005 * seed)
    report = report_markdown(results)
    line = _table_row(report, "GLD beats logit KD")
    assert _verdict(line) == "reproduced" and _source(line) == "staged†"
    assert "† Staged reruns" in report


def test_the_first_screen_reads_in_one_screen():
    """Introduction of at most 3 lines, claims of at most 80 characters, table rows of at most 200."""
    report = (RESULTS / "REPORT.md").read_text()
    head = report[:report.index("| Q | claim |")].strip().splitlines()
    assert head[0] == "# cvpdl-bench — report" and len([line for line in head[1:] if line.strip()]) <= 3
    rows = [line for line in report.splitlines() if line.startswith("| [")]
    assert len(rows) >= 20
    for row in rows:
        assert len(row) <= 200, row
        assert len(row.split(" | ")[1]) <= 80, row


def test_the_tuned_regime_marks_a_verdict_robust_or_dependent_on_the_knob_tuning_found(tmp_path):
    results = _results_copy(tmp_path)
    tuned = results / "tuned" / "kd"
    shutil.copytree(results / "kd", tuned, ignore=shutil.ignore_patterns("tuning"))
    row = "GLD beats logit KD"
    for folder in (results / "kd", tuned):  # the same clear effect in both regimes
        _set_from(folder / "metrics.csv", "gld", "top1_last", "test", "logit_kd", lambda seed: -0.05 - 0.005 * seed)
    line = _table_row(report_markdown(results), row)
    assert _verdict(line) == "contradicted" and "robust to tuning" in line
    for folder in (results / "kd", tuned):  # no effect in either: two inconclusive verdicts agree on nothing
        _set_from(folder / "metrics.csv", "gld", "top1_last", "test", "logit_kd", lambda seed: (-1) ** seed * 0.01)
    line = _table_row(report_markdown(results), row)
    assert "robust" not in line and "; tuned inconclusive" in line
    _set_from(results / "kd" / "metrics.csv", "gld", "top1_last", "test", "logit_kd", lambda seed: -0.05 - 0.005 * seed)
    _set_from(tuned / "metrics.csv", "gld", "top1_last", "test", "logit_kd", lambda seed: 0.05 + 0.005 * seed)
    (results / "kd" / "tuning").mkdir(exist_ok=True)
    (results / "kd" / "tuning" / "best.json").write_text(json.dumps({
        "suite": "kd", "profile": "default", "objective": ["top1", "val"], "trials_per_method": 2, "methods": {
            "gld": {"value": 0.5, "default_value": 0.4, "params": {"gld.beta": 50.0}, "trials": 2,
                    "importance": {"gld.beta": 0.7, "train.lr": 0.3}},
            "logit_kd": {"value": 0.5, "default_value": 0.5, "params": {"train.lr": 0.05}, "trials": 2,
                         "importance": {"train.lr": 0.6, "logit_kd.temperature": 0.4}},
            "fitnet": {"value": 0.5, "params": {}, "trials": 2, "importance": {"fitnet.hint_weight": 0.99}}}}))
    report = report_markdown(results)
    line = _table_row(report, row)  # the most important knob of the claim's own two methods' studies
    assert _verdict(line) == "depends on gld.beta" and "**: contradicted; tuned reproduced" in line
    assert "- tuned values, development (`tuned/kd/, seeds 0-4`): **reproduced**" in report
    assert len(line) <= 200
