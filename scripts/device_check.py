"""The GPU device check (issue 24): run the first time a GPU is lent, in at most 8 minutes on one GPU.

    python scripts/device_check.py                 # --device cuda: the check itself
    python scripts/device_check.py --device cpu    # dry run with tiny settings (CI), nothing about speed
    python scripts/device_check.py --steps full --full-epochs 5 --out results/perf/device_check_full
                                                   # what is still unmeasured, when a lease is short

Steps, each in this one process (one import of torch):

1. the quick profile of every suite, seeds 0 and 1 (the dry run: seed 0);
2. seed 0 of every suite again, from a cache holding step 1's data but no trained model (CLIP, localizer, teacher,
   backbone trained anew): the metrics are compared with step 1's, identical or the largest difference stated;
3. ``perf --population`` (training images/s of the project's detectors vs their Hugging Face counterparts; detr,
   kd's logit KD and ovd's RegionCLIP trained as populations of 1, 8 and 32 vmapped members, with the peak memory
   per member; the evaluator vs pycocotools), without suite runs or cost curves: what ``--population auto`` reads
   on a GPU once committed under ``results/perf/device_check/perf/``;
4. the ``full`` profile of ``detr``, every method, seed 0, with its wall time;
5. on request (``--steps population``): the ``full`` profile of ``detr``, every method, seeds 0-4 with
   ``--population 5`` (each method's five seeds one population), with its wall time: the
   population issue's goal of 15 minutes on one H100.

``OUT`` (default ``results/perf/device_check/``) receives ``device_check.md`` and ``device_check.json`` (rewritten
after every step, so that an interrupted check keeps what it measured), ``perf/`` and each run's ``run.json``,
``metrics.csv``, ``timings.csv`` and ``summary.md`` under ``runs/<step>/<suite>/``; caches, MLflow store and model
files stay in a temporary folder. The device is named from ``torch.cuda.get_device_name`` and ``nvidia-smi``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = ("detr", "kd", "ovd")
BUDGET_SECONDS = 8 * 60
EXIT_USAGE = 2
# the dry run's tiny settings: one method per suite (the one that trains most: teacher, CLIP, localizer,
# denoising), one epoch on a handful of images
TINY = {
    "detr": ["--methods", "dn_dab_detr", "--set=data.train_images=16", "--set=data.val_images=8",
             "--set=data.test_images=8", "--set=data.probe_images=4", "--set=train.epochs=1",
             "--set=train.batch_size=8", "--set=backbone.images=32", "--set=backbone.epochs=1"],
    "kd": ["--methods", "logit_kd", "--set=data.train_images=64", "--set=data.val_images=32",
           "--set=data.test_images=32", "--set=data.id_samples=32", "--set=train.epochs=1",
           "--set=teacher_train.epochs=1"],
    "ovd": ["--methods", "regionclip", "--set=data.train_images=64", "--set=data.val_images=8",
            "--set=data.test_images=8", "--set=data.single_images=8", "--set=clip.epochs=1",
            "--set=localizer.epochs=1", "--set=regionclip.images=16", "--set=regionclip.batch_size=8",
            "--set=eval.scatter_points=20"],
}
TINY_PERF = ["--steps", "2", "--profile-steps", "1"]
STEPS = ("quick", "same", "perf", "full", "population")
DEFAULT_STEPS = ("quick", "same", "perf", "full")  # "population" on request: a lease that has already measured these
FULL_DETR_JOBS = 3  # one worker per method, side by side on the one GPU (the dry run: one process)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) | cpu (a dry run with tiny settings)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf" / "device_check")
    parser.add_argument("--cache-dir", type=Path, help="cached data and models of step 1 (default: an empty "
                                                       "temporary folder, so that step 1 trains everything)")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(DEFAULT_STEPS),
                        help="the steps to run (default: all but 'population'; 'same' needs 'quick'): a lease too "
                             "short for the whole check spends its time on what is still unmeasured")
    parser.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES),
                        help="the suites of steps 1 and 2 (default: all)")
    parser.add_argument("--full-epochs", type=int, help="train the detr full profile for this many epochs instead "
                                                        "of its 50 (a time probe: seconds per epoch in timings.csv)")
    args = parser.parse_args(argv)
    if "same" in args.steps and "quick" not in args.steps:
        parser.exit(EXIT_USAGE, "error: --steps same needs quick (it repeats quick's seed 0)\n")
    if args.full_epochs is not None and args.full_epochs < 1:
        parser.exit(EXIT_USAGE, f"error: --full-epochs must be at least 1; got {args.full_epochs}\n")
    if args.device not in ("cuda", "cpu"):
        parser.exit(EXIT_USAGE, f"error: --device must be cuda or cpu; got {args.device!r}\n")
    return args


def device_name(device: str) -> str:
    import torch

    if device == "cpu":
        return f"CPU ({os.cpu_count()} cores; dry run, tiny settings)"
    smi = shutil.which("nvidia-smi")
    driver = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip() if smi else "nvidia-smi not found"
    return (f"{torch.cuda.get_device_name(0)} (nvidia-smi: {driver}; CUDA {torch.version.cuda}, "
            f"torch {torch.__version__})")


def benchmark(*args: str) -> None:
    """``python -m benchmark ARGS`` in this process (its run.json and perf.md record this command)."""
    from benchmark.cli import main

    argv, sys.argv = sys.argv, ["benchmark", *args]
    try:
        code = main(list(args))
    finally:
        sys.argv = argv
    if code:
        raise RuntimeError(f"python -m benchmark {' '.join(args)} exited with {code}")


def run_folder(results: Path, suite: str) -> Path:
    """A non-default profile writes ``<suite>/<data>-<profile>-<hash>/``."""
    [found] = (results / suite).glob("*/run.json")
    return found.parent


def data_only_cache(cache: Path, again: Path) -> None:
    """``again`` links every folder of ``cache`` that holds no trained model (``*.pt``): the data is reused, every
    model is trained anew."""
    again.mkdir(parents=True)
    for folder in cache.iterdir():
        if folder.is_dir() and not any(folder.rglob("*.pt")):
            (again / folder.name).symlink_to(folder.resolve(), target_is_directory=True)


def keep_run(results: Path, suite: str, out: Path) -> Path:
    """Copies the run's summary files to ``out/<suite>/`` (its models and MLflow store stay behind)."""
    kept = out / suite
    kept.mkdir(parents=True)
    for name in ("run.json", "metrics.csv", "timings.csv", "summary.md"):
        shutil.copy2(run_folder(results, suite) / name, kept / name)
    return kept


def compare_metrics(first: Path, second: Path, seed: int) -> dict:
    """Seed ``seed``'s rows of two metrics.csv files: how many values are bitwise equal, the largest differences."""
    import numpy as np
    import pandas as pd

    keys = ["suite", "method", "seed", "epoch", "split", "metric"]
    a = pd.read_csv(first / "metrics.csv")
    a = a[a["seed"] == seed]
    b = pd.read_csv(second / "metrics.csv")
    both = a.merge(b, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    matched = both[both["_merge"] == "both"]
    va, vb = matched["value_a"].to_numpy(float), matched["value_b"].to_numpy(float)
    equal = (va == vb) | (np.isnan(va) & np.isnan(vb))
    diff = np.abs(va - vb)
    rel = diff / np.maximum(np.abs(va), 1e-12)
    worst = matched.assign(diff=diff).sort_values("diff", ascending=False).head(1)
    return {"values": int(len(matched)), "bitwise_equal": int(equal.sum()),
            "unmatched_rows": int((both["_merge"] != "both").sum()),
            "max_abs_diff": float(np.nanmax(diff, initial=0.0)), "max_rel_diff": float(np.nanmax(rel, initial=0.0)),
            "worst": "" if equal.all() else " ".join(str(worst[k].iloc[0]) for k in keys[1:])}


def perf_rows(perf_dir: Path) -> list[dict]:
    """The speed figures the issue asks for: images/s (ours and Hugging Face's, and their ratio), the evaluator."""
    import pandas as pd

    frame = pd.read_csv(perf_dir / "perf.csv")
    rows = [{"item": r.item, "value": r.value, "unit": r.unit} for r in frame.itertuples()
            if r.section in ("machine", "evaluator", "population") or (r.section == "train" and r.unit == "img/s")]
    speed = {r["item"].removesuffix(" images/s"): r["value"] for r in rows if r["unit"] == "img/s"}
    for ours, theirs in (("detr", "hf_detr"), ("dab_detr", "hf_dab_detr"), ("dn_dab_detr", "hf_dab_detr")):
        if ours in speed and theirs in speed:
            rows.append({"item": f"{ours} ÷ {theirs} images/s", "value": speed[ours] / speed[theirs], "unit": "×"})
    return rows


class Record:
    """Every step's outcome, written out after each step."""

    def __init__(self, out: Path, device: str, name: str, arguments: list[str] = ()):
        self.out, self.started = out, time.perf_counter()
        self.data = {"device": device, "device_name": name, "arguments": list(arguments),
                     "budget_seconds": BUDGET_SECONDS, "steps": {}}

    def step(self, name: str, seconds: float, **details) -> None:
        self.data["steps"][name] = {"seconds": round(seconds, 1), **details}
        self.data["total_seconds"] = round(time.perf_counter() - self.started, 1)
        self.write()

    def attempt(self, name: str, step) -> None:
        """Runs ``step()`` (which returns the step's details) and records it, or records its error."""
        started = time.perf_counter()
        try:
            details = step()
        except Exception as error:  # noqa: BLE001 (recorded and shown; the check goes on)
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            print(f"device check: step {name!r} failed: {message}", file=sys.stderr)
            details = {"outcome": f"failed: {message}", "failed": True}
        self.step(name, time.perf_counter() - started, **details)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "device_check.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        (self.out / "device_check.md").write_text(self.markdown())

    def markdown(self) -> str:
        d, steps = self.data, self.data["steps"]
        total = d.get("total_seconds", 0.0)
        lines = ["# Device check", "", f"Device: {d['device_name']}.", "",
                 f"Command: `{' '.join(['python scripts/device_check.py', *d['arguments']])}`; total {total:.1f} s "
                 f"(budget {BUDGET_SECONDS} s on one GPU: {'within' if total <= BUDGET_SECONDS else 'over'}).", "",
                 "| step | seconds | outcome |", "|---|---|---|"]
        for name, s in steps.items():
            lines.append(f"| {name} | {s['seconds']} | {s.get('outcome', '')} |")
        if "suites" in (same := steps.get("same seed twice", {})):
            lines += ["", "Seed 0 run twice, the second time with every model trained anew (metrics.csv rows "
                      "compared):", "",
                      "| suite | values | bitwise equal | largest abs. difference | largest rel. difference | where |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {suite} | {c['values']} | {c['bitwise_equal']} | {c['max_abs_diff']:.3g} | "
                      f"{c['max_rel_diff']:.3g} | {c['worst']} |" for suite, c in same["suites"].items()]
        if "rows" in (perf := steps.get("perf", {})):
            lines += ["", "perf (full tables in `perf/perf.md`):", "", "| item | value | unit |", "|---|---|---|"]
            lines += [f"| {r['item']} | {r['value']:.4g} | {r['unit']} |" for r in perf["rows"]]
        if "methods" in (full := steps.get("detr full profile", {})):
            lines += ["", f"detr `full` profile (epochs: {full['epochs']}), seed 0, methods "
                          f"{', '.join(full['methods'])} (--jobs {full['jobs']}): runner wall time "
                          f"{full['wall_seconds']} s; test AP50 "
                      + ", ".join(f"{m} {v:.3f}" for m, v in full["test_AP50"].items()) + "."]
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu for the dry run)", file=sys.stderr)
        return EXIT_USAGE
    sys.path.insert(0, str(ROOT))
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / "device_check.json").is_file():
            print(f"error: {out} is not empty and holds no earlier device check: not overwritten", file=sys.stderr)
            return EXIT_USAGE
        shutil.rmtree(out)  # an earlier check's output
    record = Record(out, args.device, device_name(args.device), sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="device_check_") as scratch:
        check(Path(scratch), args.cache_dir or Path(scratch) / "cache", out, record, args.device, args.steps,
              args.full_epochs, tuple(args.suites))
    print(f"→ {out / 'device_check.md'}")
    return 1 if any(step.get("failed") for step in record.data["steps"].values()) else 0


def check(scratch: Path, cache: Path, out: Path, record: Record, device: str, steps=STEPS,
          full_epochs: int | None = None, suites: tuple[str, ...] = SUITES) -> None:
    """The four steps; a step that fails is recorded with its error and the next one still runs (a GPU lease is
    one try), except the repeat of step 1, which needs step 1's runs."""
    import pandas as pd

    tiny = device == "cpu"
    common = ["--device", device, "-q"]
    seeds = ["0"] if tiny else ["0", "1"]
    quick_name = f"quick profile, {', '.join(suites)}, seeds {' '.join(seeds)}"

    def suite_args(suite: str) -> list[str]:
        return TINY[suite] if tiny else []

    def quick() -> dict:
        for suite in suites:
            benchmark("run", "--suite", suite, "--profile", "quick", "--seeds", *seeds, "--results-dir",
                      str(scratch / "quick"), "--cache-dir", str(cache), *common, *suite_args(suite))
        kept = {s: keep_run(scratch / "quick", s, out / "runs" / "quick") for s in suites}
        walls = {s: json.loads((kept[s] / "run.json").read_text())["wall_seconds"] for s in suites}
        return {"outcome": ", ".join(f"{s} {w} s" for s, w in walls.items()), "wall_seconds": walls}

    def same_seed_twice() -> dict:
        compared = {}
        data_only_cache(cache, scratch / "cache_again")
        for suite in suites:
            benchmark("run", "--suite", suite, "--profile", "quick", "--seeds", "0", "--results-dir",
                      str(scratch / "again"), "--cache-dir", str(scratch / "cache_again"), *common,
                      *suite_args(suite))
            compared[suite] = compare_metrics(out / "runs" / "quick" / suite,
                                              keep_run(scratch / "again", suite, out / "runs" / "again"), 0)
        identical = all(c["bitwise_equal"] == c["values"] and not c["unmatched_rows"] for c in compared.values())
        return {"suites": compared, "outcome": "identical" if identical else "differs: largest abs. difference "
                + f"{max(c['max_abs_diff'] for c in compared.values()):.3g} (table below)"}

    def perf() -> dict:
        benchmark("perf", "--device", device, "--results-dir", str(out), "--cache-dir", str(cache),
                  "--suites-profile", "none", "--no-curves", "--population", *(TINY_PERF if tiny else []),
                  "-q")
        rows = perf_rows(out / "perf")
        return {"rows": rows, "outcome": "; ".join(f"{r['item']} {r['value']:.3g} {r['unit']}" for r in rows
                                                   if r["unit"] == "×")}

    def detr_full() -> dict:
        jobs = 1 if tiny else FULL_DETR_JOBS
        epochs = [f"--set=train.epochs={full_epochs}", "--set=train.lr_drop=0"] if full_epochs else []
        benchmark("run", "--suite", "detr", "--profile", "full", "--seeds", "0", "--jobs", str(jobs),
                  "--results-dir", str(scratch / "full"), "--cache-dir", str(cache), *common, *suite_args("detr"),
                  *epochs)
        folder = keep_run(scratch / "full", "detr", out / "runs" / "full")
        info = json.loads((folder / "run.json").read_text())
        metrics = pd.read_csv(folder / "metrics.csv")
        ap50 = metrics[(metrics["split"] == "test") & (metrics["metric"] == "AP50")].groupby("method")["value"]
        return {"methods": info["methods"], "jobs": jobs, "wall_seconds": info["wall_seconds"],
                "epochs": full_epochs or "the profile's",
                "test_AP50": ap50.mean().to_dict(), "outcome": f"runner wall time {info['wall_seconds']} s"}

    def detr_population() -> dict:
        seeds = ["0", "1"] if tiny else ["0", "1", "2", "3", "4"]
        epochs = [f"--set=train.epochs={full_epochs}", "--set=train.lr_drop=0"] if full_epochs else []
        benchmark("run", "--suite", "detr", "--profile", "quick" if tiny else "full", "--seeds", *seeds,
                  "--population", str(len(seeds)), "--jobs", "1" if tiny else "2", "--results-dir",
                  str(scratch / "population"), "--cache-dir", str(cache), *common, *suite_args("detr"), *epochs)
        folder = keep_run(scratch / "population", "detr", out / "runs" / "population")
        info = json.loads((folder / "run.json").read_text())
        return {"seeds": info["seeds"], "population": info["population"], "wall_seconds": info["wall_seconds"],
                "epochs": full_epochs or "the profile's", "outcome": f"runner wall time {info['wall_seconds']} s "
                f"for {len(info['methods'])} methods × {len(seeds)} seeds (goal on one H100: 900 s)"}

    if "quick" in steps:
        record.attempt(quick_name, quick)
    if "same" in steps and record.data["steps"][quick_name].get("failed"):
        record.step("same seed twice", 0.0, outcome="skipped: step 1 failed", failed=True)
    elif "same" in steps:
        record.attempt("same seed twice", same_seed_twice)
    if "perf" in steps:
        record.attempt("perf", perf)
    if "full" in steps:
        record.attempt("detr full profile", detr_full)
    if "population" in steps:
        record.attempt("detr full profile, 5 seeds as populations", detr_population)


if __name__ == "__main__":
    sys.exit(main())
