"""The pre-registered confirmation: the decision procedure keeps its error rate (simulated under the null with the
pilots' variances), reaches the power its plan promises, and its bookkeeping (plans, seed roles, controls as tests,
duplicate and missing rows) holds."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

import benchmark.suites  # noqa: F401  (registers the suites)
from benchmark.claims import ALPHA, Arm, Claim, adjust, evaluate_family
from benchmark.power import tost_power, ttest_power
from benchmark.confirmation import PILOT_SEEDS, build_plan, plan_mismatch, simulate, used_seeds
from cvpdl.errors import UserInputError

RESULTS = Path(__file__).resolve().parents[1] / "results"
SUITES = ("detr", "kd", "ovd")


def _family() -> tuple[list[dict], dict[str, int]]:
    """The report's primary claims as the committed plans declare them (pilot effect and sd, margin), and each
    suite's planned n."""
    claims, n = [], {}
    for suite in SUITES:
        plan = json.loads((RESULTS / "confirmation" / suite / "plan.json").read_text())
        n[suite] = plan["n"]
        claims += [{"suite": suite, "sd": c["pilot"]["sd"], "delta": c["delta"], "diff": c["pilot"]["diff"]}
                   for c in plan["claims"]]
    return claims, n


def _family_error(decisions: np.ndarray, wrong: list[set[str]]) -> float:
    return float(np.mean(np.any([np.isin(decisions[:, i], list(w)) for i, w in enumerate(wrong)], axis=0)))


def _type_i(reps: int) -> dict[str, float]:
    claims, _ = _family()
    m = len(claims)
    delta = np.array([c["delta"] for c in claims])
    truths = {"every Δ = 0": np.zeros(m),  # declaring higher or lower is the error
              "every Δ at its margin": delta,  # declaring equivalent is the error
              "half at 0, half at the margin": np.where(np.arange(m) % 2 == 0, 0.0, -delta)}
    rates = {}
    for k, (name, truth) in enumerate(truths.items()):
        wrong = [{"higher", "lower"} if t == 0 else {"equivalent"} for t in truth]
        rates[name] = _family_error(simulate(claims, truth, reps, seed=k), wrong)
    return rates


@pytest.mark.parametrize("reps", [pytest.param(4000, id="ci"), pytest.param(40000, id="full", marks=pytest.mark.slow)])
def test_type_i_error_of_the_planned_procedure_is_at_most_alpha(reps):
    """Pilot → plan → one look → Shaffer over the 12 primary claims → three-way decision, simulated end to end:
    the chance of any wrong decision in the family stays within α + 2 Monte-Carlo standard errors."""
    bound = ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / reps)
    rates = _type_i(reps)
    print(f"\nsimulated family-wise type-I error ({reps} replicates; bound {bound:.4f}): "
          + ", ".join(f"{name} {rate:.4f}" for name, rate in rates.items()))
    assert all(rate <= bound for rate in rates.values()), rates


def test_power_at_the_planned_effect_is_the_plans():
    """At the pilots' effects and the planned n: each claim's rate of the right decision is its planned power
    (difference test: noncentral t at α / m; equivalence: at least the TOST's lower bound) within 3 points."""
    claims, n = _family()
    m, reps = len(claims), 4000
    truth = np.array([c["diff"] for c in claims])
    decisions = simulate(claims, truth, reps, seed=11, n=n)
    lines = []
    for i, c in enumerate(claims):
        nobs, level = np.array([n[c["suite"]]]), ALPHA / m
        planned = float(ttest_power(abs(c["diff"]) / c["sd"], nobs, level)[0])
        measured = float(np.mean(decisions[:, i] == ("higher" if c["diff"] > 0 else "lower")))
        lines.append(f"{c['suite']} Δ {c['diff']:+.4f}: difference power planned {planned:.3f}, simulated "
                     f"{measured:.3f}")
        assert abs(measured - planned) <= 0.03, lines[-1]
        bound = float(tost_power(abs(c["diff"]), c["sd"], c["delta"], nobs, level)[0])
        if bound > planned:  # the plan powers this claim's equivalence, not its difference
            equivalent = float(np.mean(decisions[:, i] == "equivalent"))
            lines.append(f"  equivalence within ±{c['delta']:g}: planned ≥ {bound:.3f}, simulated {equivalent:.3f}")
            assert equivalent >= bound - 0.03, lines[-1]
    print("\n" + "\n".join(lines))


def test_shaffer_step_down_golden_values():
    # one test per claim: Shaffer is Holm (statsmodels)
    p = [0.01, 0.04, 0.03, 0.002]
    holm = multipletests(p, method="holm")[1]
    assert [a[0] for a in adjust([[x] for x in p])] == pytest.approx(list(holm))
    # two claims of two tests each (family of 2): sorted 0.001 (claim 0, t=2) → 0.002; 0.01 (claim 1, t=2) → 0.02;
    # 0.02 (claim 0 closes after it, t=2) → 0.04; 0.3 (claim 1; claim 0 is closed, t=1) → 0.3
    assert adjust([[0.001, 0.02], [0.01, 0.3]]) == [[0.002, 0.04], [0.02, 0.3]]
    # a declared family of 12 claims, one given: its lone test at α / 12
    assert adjust([[0.004, float("nan")]], 12)[0][0] == pytest.approx(0.048)
    assert math.isnan(adjust([[0.004, float("nan")]], 12)[0][1])


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["suite", "method", "seed", "epoch", "split", "metric", "value"])


def test_a_level_control_holds_only_when_its_lower_bound_clears_the_level():
    values = [0.62, 0.70, 0.58, 0.66, 0.63]  # mean 0.638 ≥ 0.6, but its one-sided 95% bound is below 0.6
    claim = Claim("lvl", "AP50 ≥ 0.6", Arm("m", "AP50", "val"), 0.6, role="control")
    frame = _frame([("s", "m", seed, None, "val", "AP50", v) for seed, v in enumerate(values)])
    t = evaluate_family(frame, [claim])["lvl"]
    # sd 0.04494, se 0.02010: t = 0.038 / 0.0201 = 1.8905, df 4 → one-sided p 0.0658; bound 0.638 − 2.1318 · 0.0201
    assert t.p == pytest.approx(0.0658, abs=2e-4) and t.ci_low + 0.6 == pytest.approx(0.59515, abs=2e-4)
    assert t.direction == "not shown" and not t.holds
    frame = _frame([("s", "m", seed, None, "val", "AP50", v + 0.05) for seed, v in enumerate(values)])
    assert evaluate_family(frame, [claim])["lvl"].holds


def test_duplicate_rows_are_an_error_and_missing_values_are_counted():
    claim = Claim("c", "a − b", Arm("a", "acc", "test"), Arm("b", "acc", "test"))
    rows = [("s", m, seed, None, "test", "acc", 0.5 + 0.1 * (m == "a") + 0.01 * seed)
            for m in "ab" for seed in range(4)]
    with pytest.raises(UserInputError, match=r"holds a acc\[test\] more than once at \(seed, epoch\) \(1, None\)"):
        evaluate_family(_frame(rows + [("s", "a", 1, None, "test", "acc", 0.9)]), [claim])
    rows[0] = ("s", "a", 0, None, "test", "acc", float("nan"))
    t = evaluate_family(_frame(rows), [claim])["c"]
    assert t.n == 3 and t.missing == 1 and "(1 NaN values left out)" in t.line()


def _pilot_results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(RESULTS / "kd", results / "kd", ignore=shutil.ignore_patterns("figures"))
    return results


def test_a_plan_takes_new_seeds_and_every_seed_keeps_one_role(tmp_path, cli):
    results = _pilot_results(tmp_path)
    staged = results / "exploratory" / "kd"
    staged.mkdir(parents=True)
    frame = pd.read_csv(results / "kd" / "metrics.csv")
    frame.assign(seed=frame["seed"] + 200).to_csv(staged / "metrics.csv", index=False)  # seeds 200-204 are taken
    plan = build_plan("kd", results)
    assert set(plan["seeds"]).isdisjoint(used_seeds(results, "kd")) and plan["seeds"][0] == 205
    assert len(plan["seeds"]) == plan["n"] and plan["family_size"] == 12 and plan["pilot"]["seeds"] == [0, 1, 2, 3, 4]
    capped = build_plan("kd", results, seed_cap=6)  # a budget: n never above it, a claim needing more says so
    assert capped["n"] <= 6 and capped["seed_cap"] == 6 and capped["seeds"] == plan["seeds"][:capped["n"]]
    assert all(c["underpowered"] == (c["seeds_needed"] is None or c["seeds_needed"] > capped["n"])
               for c in capped["claims"])
    code, _, err = cli("plan", "--suite", "kd", "--seed-cap", "2", "--results-dir", str(results))
    assert code == 2 and err.strip().endswith("must lie in [5, 64]") and "\n" not in err.strip()
    code, out, _ = cli("plan", "--suite", "kd", "--results-dir", str(results))
    assert code == 0 and "run it once" in out
    assert cli("plan", "--suite", "kd", "--results-dir", str(results))[0] == 2  # a plan is written once
    plan_file = results / "confirmation" / "kd" / "plan.json"
    first = json.loads(plan_file.read_text())["seeds"][0]
    code, _, err = cli("run", "--suite", "kd", "--seeds", str(first), "--results-dir", str(results))
    assert code == 2 and "reserved by the confirmation plan" in err
    code, _, err = cli("tune", "--suite", "kd", "--seeds", str(first), "--results-dir", str(results))
    assert code == 2 and "reserved by the confirmation plan" in err
    code, _, err = cli("run", "--suite", "kd", "--plan", str(plan_file), "--set", "train.lr=0.1")
    assert code == 2 and "--plan fixes the config" in err
    assert not (results / "confirmation" / "kd" / "metrics.csv").exists()


def test_the_tuned_regime_plans_its_own_seeds_and_fixes_its_values(tmp_path, cli):
    from benchmark.plan import RunOptions, apply_plan

    results = _pilot_results(tmp_path)
    assert cli("plan", "--suite", "kd", "--tuned", "--results-dir", str(results))[0] == 2  # no tuned pilot yet
    tuned = results / "tuned" / "kd"
    shutil.copytree(results / "kd", tuned)
    run = json.loads((tuned / "run.json").read_text())
    (tuned / "run.json").write_text(json.dumps({**run, "params": {"fitnet": ["fitnet.hint_weight=10.0"]}}))
    assert cli("plan", "--suite", "kd", "--results-dir", str(results))[0] == 0
    code, out, _ = cli("plan", "--suite", "kd", "--tuned", "--results-dir", str(results))
    assert code == 0 and "tuned/confirmation/kd/plan.json" in out
    papers = json.loads((results / "confirmation" / "kd" / "plan.json").read_text())
    plan_file = results / "tuned" / "confirmation" / "kd" / "plan.json"
    plan = json.loads(plan_file.read_text())
    assert plan["regime"] == "tuned" and plan["params"] == {"fitnet": ["fitnet.hint_weight=10.0"]}
    assert set(plan["seeds"]).isdisjoint(papers["seeds"])  # each regime's confirmation on seeds of its own
    assert plan["seeds"][0] == papers["seeds"][-1] + 1
    options = apply_plan(RunOptions(suite="kd", plan=plan_file))
    assert options.tuned_values == {"fitnet": {"fitnet.hint_weight": 10.0}} and options.seeds == plan["seeds"]
    assert options.results_dir == results.resolve() / "tuned" / "confirmation"
    # a development run may not take a seed either plan reserves
    code, _, err = cli("run", "--suite", "kd", "--seeds", str(plan["seeds"][0]), "--results-dir", str(results))
    assert code == 2 and "tuned/confirmation/kd/plan.json" in err


def test_a_confirmation_is_decided_from_only_when_it_is_its_plan():
    run = json.loads((RESULTS / "kd" / "run.json").read_text())
    frame = pd.read_csv(RESULTS / "kd" / "metrics.csv")
    plan = {"seeds": list(PILOT_SEEDS), "methods": run["methods"], "config_hash": run["config_hash"],
            "profile": run["profile"]}
    assert plan_mismatch(plan, frame, run) is None
    assert "1 missing (first 4)" in plan_mismatch(plan, frame[frame["seed"] != 4], run)
    assert "not the plan's" in plan_mismatch({**plan, "config_hash": "0" * 16}, frame, run)


@pytest.mark.slow
def test_a_plan_runs_once_into_its_folder_and_the_report_decides_from_it(tmp_path, cache_dir, cli):
    """Pilot (quick, seeds 0-4) → plan (cut to 2 seeds here, for time) → run --plan → the first table's kd rows
    come from the confirmation; a second run of the plan trains nothing."""
    results = tmp_path / "results"
    assert cli("run", "--suite", "kd", "--profile", "quick", "--seeds", "0", "1", "2", "3", "4", "--results-dir",
               str(results), "--cache-dir", str(cache_dir))[0] == 0
    pilot = next((results / "kd").glob("digits-quick-*"))
    for name in ("metrics.csv", "run.json"):
        shutil.copy(pilot / name, results / "kd" / name)  # the quick run as the suite's development pilot
    assert cli("plan", "--suite", "kd", "--results-dir", str(results))[0] == 0
    plan_file = results / "confirmation" / "kd" / "plan.json"
    plan = json.loads(plan_file.read_text())
    plan_file.write_text(json.dumps({**plan, "seeds": plan["seeds"][:2], "n": 2}))
    assert cli("run", "--suite", "kd", "--plan", str(plan_file), "--cache-dir", str(cache_dir))[0] == 0
    frame = pd.read_csv(plan_file.parent / "metrics.csv")
    assert sorted(frame["seed"].unique()) == plan["seeds"][:2]
    from benchmark.report import report_markdown

    rows = [line for line in report_markdown(results).splitlines() if line.startswith("| [B")]
    assert rows and all(line.rstrip(" |").endswith("confirmation") for line in rows if "untestable" not in line)
