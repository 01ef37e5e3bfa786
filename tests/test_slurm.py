"""The cluster path against a real SLURM: a quick kd run whose cells are SLURM jobs (``--executor submitit
--submitit-cluster slurm``) writes the metrics.csv of the same run in one process. Needs a SLURM that answers
(``scripts/start_slurm.sh`` starts a single-node one on this machine, as root); skipped with the reason otherwise."""
import shutil
import subprocess

import pytest

from tests.conftest import suite_folder


def _slurm_missing() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM client (sbatch, sinfo) on PATH: apt-get install slurm-wlm munge; scripts/start_slurm.sh"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo failed ({err})"
    if not {"idle", "mixed", "allocated"} & set(states.split()):
        return f"no SLURM node up (sinfo: {states.strip() or 'no answer'}): scripts/start_slurm.sh starts one"
    return None


@pytest.mark.slow
def test_cells_as_slurm_jobs_give_the_numbers_of_one_process(tmp_path, cache_dir):
    missing = _slurm_missing()
    if missing:
        pytest.skip(missing)
    from benchmark.cli import main

    args = ["run", "--suite", "kd", "--profile", "quick", "--seeds", "0", "--methods", "student_baseline",
            "logit_kd", "--threads", "1", "--cache-dir", str(cache_dir)]
    assert main([*args, "--results-dir", str(tmp_path / "one")]) == 0
    assert main([*args, "--executor", "submitit", "--submitit-cluster", "slurm", "--slurm-time", "20",
                 "--slurm-partition", "debug", "--results-dir", str(tmp_path / "slurm")]) == 0
    assert (suite_folder(tmp_path / "one", "kd") / "metrics.csv").read_bytes() == \
        (suite_folder(tmp_path / "slurm", "kd") / "metrics.csv").read_bytes()
    logs = list((tmp_path / "slurm" / "submitit").glob("*_log.out"))
    assert len(logs) == 2  # one SLURM job per cell
    for log in logs:  # SLURM's own record of each job (kept MinJobAge, 300 s by default, after it ends)
        job = log.name.removesuffix("_log.out").removesuffix("_0")
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert "JobState=COMPLETED" in shown, shown
