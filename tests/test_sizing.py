"""``--population auto`` (``benchmark.sizing``): the size a committed perf run measured fastest on this device type,
a declared fallback where none did, recorded in run.json; a bad value is one line."""
import csv
import json

import pytest

from benchmark.sizing import GPU_UNMEASURED, default_population, population_option, population_size
from cvpdl.errors import UserInputError


def _perf_run(folder, device, rates):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"device": device}))
    with (folder / "perf.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, ["section", "item", "value", "unit"])
        writer.writeheader()
        # detr's population of 1 is its batched model: one member alone is the train table's row
        writer.writerow({"section": "train", "item": "detr images/s", "value": 323.0, "unit": "img/s"})
        for suite, sizes in rates.items():
            for size, value in sizes.items():
                writer.writerow({"section": "population", "item": f"{suite} population of {size} images/s",
                                 "value": value, "unit": "img/s"})
    return folder


def test_auto_is_the_size_measured_fastest_on_the_device_type(tmp_path):
    cpu = _perf_run(tmp_path / "cpu", "cpu", {"kd": {1: 100.0, 4: 87.0, 8: 120.0}, "ovd": {1: 10.0, 4: 12.5, 8: 11.0},
                                              "detr": {1: 220.0, 8: 278.0}})
    gpu = _perf_run(tmp_path / "gpu", "cuda:0", {"kd": {1: 50.0, 8: 300.0, 32: 900.0}})
    size, why = default_population("kd", "cpu", (cpu, gpu))
    assert size == 1 and "no population measured 1.25× faster" in why  # 1.2× is within the timing noise: alone
    size, why = default_population("ovd", "cpu", (cpu, gpu))
    assert size == 4 and "P = 4: 1.25× one member alone" in why
    assert default_population("detr", "cpu", (cpu, gpu))[0] == 1  # 278 beats its batched P = 1, not 323 alone
    assert default_population("ovd", "cpu", (cpu, gpu))[0] == 4  # 1.25×: just the margin
    assert default_population("kd", "cuda", (cpu, gpu))[0] == 32
    # nothing measured on that device type (or for that suite): the declared fallbacks
    assert default_population("ovd", "cuda", (cpu, gpu))[0] == GPU_UNMEASURED
    size, why = default_population("detr", "cuda", (cpu, gpu))
    assert size == GPU_UNMEASURED and "unmeasured" in why
    assert default_population("kd", "cpu", (tmp_path / "missing",))[0] == 1


def test_an_explicit_size_wins_and_a_suite_without_populations_gets_one(tmp_path):
    assert population_size(3, "kd", True, "cuda") == (3, "--population")
    assert population_size("auto", "ovd", False, "cuda")[0] == 1
    assert population_size("auto", "kd", True, "cuda", world=2)[0] == 1  # torchrun: one process per rank
    assert population_option("auto") == "auto" and population_option("8") == 8
    with pytest.raises(UserInputError, match="whole number or 'auto'"):
        population_option("many")


def test_the_committed_cpu_measurement_decides_this_machines_default():
    """The committed perf run (results/perf/) measured every suite's population path on a CPU: auto reads it."""
    for suite in ("detr", "kd", "ovd"):
        size, why = default_population(suite, "cpu")
        assert size >= 1 and "results/perf/perf.csv" in why, (suite, why)
