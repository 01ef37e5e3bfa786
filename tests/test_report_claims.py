"""Claims, multiplicity, power, censoring and n=1 formatting of the generated reports (golden values by hand)."""
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmark.suites.kd  # noqa: F401  (registers the suites)
import benchmark.suites.ovd  # noqa: F401
from benchmark.claims import (
    Arm,
    Claim,
    _sign_test_seeds_needed,
    _ttest_seeds_needed,
    describe,
    describe_censored,
    evaluate_family,
    holm,
    summary_rows,
)
from benchmark.registry import REGISTRY
from benchmark.report import load_suite, summary_markdown
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
    assert _ttest_seeds_needed(np.array([0.0, 1.0, 2.0]), 0.05) == 10
    assert math.isinf(_ttest_seeds_needed(np.array([-1.0, 0.0, 1.0]), 0.05))
    # always wins: the two-sided sign test needs 2 * 0.5^m < 0.05, i.e. m = 6 (0.031), not 5 (0.0625)
    assert _sign_test_seeds_needed(3, 0, 3, 0.05) == 6
    assert math.isinf(_sign_test_seeds_needed(1, 1, 3, 0.05))


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
    assert t.p == pytest.approx(1.0) and t.direction == "no significant difference"


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
    flip_before = _line(before, "| `gld` − `logit_kd` test top-1 |").split("|")[2].strip()
    flip_after = _line(after, "| `gld` − `logit_kd` test top-1 |").split("|")[2].strip()
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
    assert verdict[before] in ("higher", "lower", "no") and verdict[after] in ("higher", "lower", "no")
    assert "no" in (verdict[before], verdict[after]) or verdict[after] != verdict[before]
    assert before != after


def test_methods_at_chance_or_never_at_target_are_flagged():
    from benchmark.registry import Floor, SuiteSpec
    from benchmark.report import floor_lines

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
