"""A study's best.json says which code, seed, threads and host it came from; `run` refuses values tuned on other
training code unless told (--allow-stale), and values tuned on a seed it evaluates; the report says when tuned
values predate the code."""
import json

import pandas as pd
import pytest

from benchmark.params import (TUNING_SEEDS, from_stored, load_params, staleness, stored, study_provenance,
                              training_code_digest)
from cvpdl.errors import UserInputError


def _best(tmp_path, provenance):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"suite": "knob", "profile": "default", "objective": ["score", "val"],
                                "trials_per_method": 2, "provenance": provenance,
                                "methods": {"tunable": {"value": 0.5, "default_value": 0.25,
                                                        "params": {"knob.x": 0.3}, "trials": 2}}}))
    return path


def test_provenance_records_the_code_and_the_study():
    provenance = study_provenance(seeds=TUNING_SEEDS, threads=2, seconds=3600.04)
    assert provenance["code_digest"] == training_code_digest() and len(provenance["commit"]) >= 7
    assert (provenance["seeds"], provenance["threads"], provenance["study_seconds"]) == ([1000, 1001], 2, 3600.0)
    assert provenance["host"] and provenance["written"]
    assert staleness({"provenance": provenance}) is None


def test_values_from_other_code_are_refused_unless_allowed(tmp_path):
    fresh = study_provenance(seeds=TUNING_SEEDS, threads=2, seconds=1.0)
    assert load_params(_best(tmp_path, fresh), "knob") == {"tunable": {"knob.x": 0.3}}
    stale = {**fresh, "code_digest": "0" * 16, "commit": "a4fd8ac0ffee"}
    with pytest.raises(UserInputError, match=r"tuned on other training code \(commit a4fd8ac0ffee\).*--allow-stale"):
        load_params(_best(tmp_path, stale), "knob")
    assert load_params(_best(tmp_path, stale), "knob", allow_stale=True) == {"tunable": {"knob.x": 0.3}}
    with pytest.raises(UserInputError, match="records no provenance"):  # the studies committed before this check
        load_params(_best(tmp_path, None), "knob")


def test_values_tuned_on_an_evaluation_seed_are_refused(tmp_path):
    path = _best(tmp_path, study_provenance(seeds=[1000, 3], threads=1, seconds=1.0))
    with pytest.raises(UserInputError, match="tuned on seed 3, which this run evaluates too"):
        load_params(path, "knob", seeds=(0, 1, 2, 3, 4))
    assert load_params(path, "knob", seeds=(5, 6))


def test_a_study_before_several_seeds_records_its_one_seed():
    from benchmark.params import tuning_seeds

    assert tuning_seeds({"provenance": {"seed": 7}}) == [7] and tuning_seeds({}) == []


def test_the_default_tuning_seeds_are_no_evaluation_seeds():
    from benchmark.parser import build_parser
    from benchmark.tune import TuneOptions

    assert TuneOptions(suite="kd").seeds == list(TUNING_SEEDS)
    assert not set(TUNING_SEEDS) & {*range(5), *range(100, 143), *range(200, 264)}  # development, staged, planned
    assert build_parser().parse_args(["tune", "--suite", "kd"]).seeds == list(TUNING_SEEDS)


def test_report_names_the_provenance_and_says_when_values_predate_the_code(tmp_path):
    from benchmark.summary import tuning_lines

    (tmp_path / "tuning").mkdir()
    stale = {**study_provenance(seeds=TUNING_SEEDS, threads=2, seconds=7200.0), "code_digest": "0" * 16}
    _best(tmp_path / "tuning", stale)
    lines = tuning_lines(tmp_path, pd.DataFrame(), {})
    assert any(line.startswith("Study provenance: commit") and "tuning seeds 1000 1001, 2 threads" in line
               and "2.00 h of trial time" in line for line in lines)
    assert any("predate the current training code" in line for line in lines)


def test_a_recorded_equivalence_keeps_a_study_fresh_through_a_chain(tmp_path, monkeypatch):
    """scripts/check_equivalence.py records result-identical code changes; a study tuned on any code linked to the
    current one, directly or through earlier records, is not stale, and nothing else is."""
    import benchmark.params as params

    path = tmp_path / "code_equivalence.json"
    path.write_text(json.dumps({"records": [{"digest": "b", "same_as": "a"}, {"digest": "c", "same_as": "b"},
                                            {"digest": "y", "same_as": "x"}]}))
    assert params.equivalent_digests("c", path) == {"a", "b", "c"}
    assert params.equivalent_digests("a", path) == {"a", "b", "c"}
    assert params.equivalent_digests("z", path) == {"z"} and params.equivalent_digests("c", tmp_path / "no") == {"c"}
    monkeypatch.setattr(params, "EQUIVALENCE_FILE", path)
    monkeypatch.setattr(params, "training_code_digest", lambda: "c")
    provenance = {**study_provenance(seeds=TUNING_SEEDS, threads=1, seconds=1.0), "commit": "a4fd8ac0ffee"}
    assert staleness({"provenance": {**provenance, "code_digest": "a"}}) is None
    assert "other training code" in staleness({"provenance": {**provenance, "code_digest": "x"}})


def test_tuned_values_travel_typed_and_are_stored_as_the_committed_strings():
    """Tuned values are typed in flight; run.json and plan.json store them as ``section.key=value`` strings, the form
    the committed config hashes were made from. Every committed stored form reads back to values that store to the
    same strings, so no committed hash moves; the typed values are the config's types."""
    from benchmark.paths import REPO_ROOT

    values = {"fitnet": {"fitnet.hint_weight": 10.0, "train.lr": 1.96e-3, "gld.grid": 2, "x.flag": True,
                         "regionclip.label_pool": "all"}}
    assert stored(values) == {"fitnet": ["fitnet.hint_weight=10.0", "gld.grid=2", "regionclip.label_pool=all",
                                         "train.lr=0.00196", "x.flag=true"]}
    assert from_stored(stored(values)) == values
    committed = [path for pattern in ("results/**/run.json", "results/**/plan.json")
                 for path in REPO_ROOT.glob(pattern)]
    forms = [params for path in committed if (params := json.loads(path.read_text()).get("params"))]
    assert len(forms) >= 6  # the tuned regimes' runs and plans of three suites
    for params in forms:
        assert stored(from_stored(params)) == params
        assert all(not isinstance(v, str) for values in from_stored(params).values() for v in values.values())
