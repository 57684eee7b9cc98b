"""normlab's Optuna sweeper with a real SQLite study: resume after a kill, stale trials, pruning, the report."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from helpers import run_entry
from hydra_plugins.normlab_sweepers.optuna_sweeper import tell
from normlab.optuna_study import open_storage, search_space
from normlab.report import build_report
from test_sweep import multirun, statuses

SEARCH = ["hparams_search=lr_optuna"]


def trial_states(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("select number, state from trials order by number").fetchall()


def complete_trials(db: Path) -> int:
    """COMPLETE trials in ``db``; 0 until optuna has made the file and its tables (the file comes first)."""
    if not db.is_file():
        return 0
    try:
        return sum(s == "COMPLETE" for _, s in trial_states(db))
    except sqlite3.OperationalError:  # no table yet, or a write in progress
        return 0


def search(sweep: Path, *overrides: str, run: Callable[..., subprocess.CompletedProcess] = run_entry):
    proc = run("train", *SEARCH, *overrides, f"hydra.sweep.dir={sweep}", cwd=sweep.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def run_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())


def test_search_space_keeps_the_official_plugins_syntax():
    parsed = OverridesParser.create().parse_overrides(
        [
            "optimizer.lr=tag(log, interval(0.003, 30.0))",
            "model=choice(baseline_mlp, bn_mlp)",
            "model.width=tag(int, interval(16, 128))",
            "seed=0,1",
            "trainer.max_steps=40",
            "seed=3",  # given again: the last one counts
        ]
    )
    fixed, space = search_space(parsed)
    assert fixed == ["seed=3", "trainer.max_steps=40"]
    assert space == {
        "optimizer.lr": FloatDistribution(0.003, 30.0, log=True),
        "model": CategoricalDistribution(["baseline_mlp", "bn_mlp"]),
        "model.width": IntDistribution(16, 128),
    }


def test_a_trial_left_running_by_a_dead_sweep_is_failed_and_numbering_continues(entry, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = optuna.create_study(
        study_name="lr_search", storage=f"sqlite:///{sweep / 'optuna.db'}", direction="maximize"
    )
    study.ask()  # trial 0, RUNNING in the database, its process gone
    proc = multirun(sweep, *SEARCH, "hydra.sweeper.n_trials=1", run=entry)
    assert "trials [0] left running by a dead sweep marked failed" in proc.stdout + proc.stderr
    assert trial_states(sweep / "optuna.db") == [(0, "FAIL"), (1, "COMPLETE")]
    assert [p.name[:3] for p in run_dirs(sweep)] == ["001"]
    # n_trials is the total: started again, a study that has it runs nothing
    again = multirun(sweep, *SEARCH, "hydra.sweeper.n_trials=1", run=entry)
    assert "1 of 1 trials done" in again.stdout + again.stderr
    assert len(trial_states(sweep / "optuna.db")) == 2


def test_pruning_stops_a_hopeless_trial_early(entry, tmp_path):
    sweep = tmp_path / "sweep"
    prune = ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1", "model=bn_mlp"]
    # a validation every 5 steps; the first trial learns, the second (lr 1e-6) cannot
    budget = ["trainer.max_steps=40", "trainer.limit_train_batches=5", "trainer.limit_val_batches=1"]
    search(sweep, *prune, "hydra.sweeper.n_trials=1", "optimizer.lr=interval(0.4, 0.5)", *budget, run=entry)
    proc = search(sweep, *prune, "hydra.sweeper.n_trials=2", "optimizer.lr=interval(1e-7, 1e-6)", *budget, run=entry)
    assert trial_states(sweep / "optuna.db") == [(0, "COMPLETE"), (1, "PRUNED")]
    good, hopeless = run_dirs(sweep)
    summary = json.loads((hopeless / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["pruned_step"] < 40
    assert json.loads((good / "summary.json").read_text())["global_step"] == 40
    assert statuses(proc.stdout) == {"001": "pruned"}
    study = optuna.load_study(study_name="lr_search", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert study.trials[1].intermediate_values  # reported through the storage from the trial's process

    report = build_report(sweep)
    text = report.path.read_text()
    assert [o.status for o in report.outcomes] == ["completed", "pruned"]
    assert "## Optuna study" in text and "1 complete, 1 pruned" in text
    assert "| 000 |" in text  # the best trial


@pytest.mark.slow
def test_a_killed_study_started_again_reaches_n_trials_complete(tmp_path):
    sweep = tmp_path / "sweep"
    steps = ["trainer.max_steps=150", "~callbacks.progress", "trainer.enable_progress_bar=false"]
    command = [
        sys.executable,
        "-m",
        "normlab.train",
        *SEARCH,
        "hydra.sweeper.n_trials=4",
        *steps,
        f"hydra.sweep.dir={sweep}",
    ]
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    db = sweep / "optuna.db"
    deadline = time.monotonic() + 240
    while complete_trials(db) < 2:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "two trials did not finish"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed = trial_states(db)

    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    states = trial_states(db)
    assert sum(s == "COMPLETE" for _, s in states) == 4  # not 2 + 4
    assert all(s in ("COMPLETE", "FAIL") for _, s in states)  # nothing left RUNNING
    assert {n for n, s in killed if s == "RUNNING"} <= {n for n, s in states if s == "FAIL"}
    numbers = [int(p.name[:3]) for p in run_dirs(sweep)]
    assert numbers == sorted(set(numbers)) and numbers[-1] == states[-1][0]  # job numbers are trial numbers
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["trials"]["complete"] == 4 and result["best_trial"] in {n for n, s in states if s == "COMPLETE"}


def job_return(run_dir: Path, value, status: JobStatus = JobStatus.COMPLETED) -> JobReturn:
    job = JobReturn()
    job.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}})
    job.status, job.return_value = status, value
    return job


@pytest.mark.parametrize(
    ("summary", "value", "state", "status"),
    [
        ({"status": "completed"}, 0.9, TrialState.COMPLETE, "completed"),
        ({"status": "diverged"}, None, TrialState.FAIL, "diverged"),  # normlab-train returns None for it
        ({"status": "pruned"}, 0.3, TrialState.PRUNED, "pruned"),
        (None, float("nan"), TrialState.FAIL, "failed"),
    ],
)
def test_each_run_tells_the_study_how_it_ended(tmp_path, summary, value, state, status):
    if summary is not None:
        (tmp_path / "summary.json").write_text(json.dumps(summary))
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    assert tell(study, trial, job_return(tmp_path, value)) == status
    (frozen,) = study.trials
    assert frozen.state == state and frozen.user_attrs == {"status": status, "run_dir": str(tmp_path)}


def test_a_task_that_returns_every_metric_asks_for_optimized_metric(tmp_path):
    study = optuna.create_study()
    with pytest.raises(HydraException, match="set optimized_metric=<metric name>"):
        tell(study, study.ask(), job_return(tmp_path, {"val/acc": 0.9, "val/loss": 0.3}))


def test_a_path_as_storage_is_a_journal_file_that_another_process_can_open(tmp_path):
    journal = tmp_path / "shared" / "study.log"
    study = optuna.create_study(study_name="s", storage=open_storage(str(journal)), direction="maximize")
    trial = study.ask({"x": FloatDistribution(0, 1)})
    study.tell(trial, 0.5)
    assert isinstance(open_storage(str(journal)), JournalStorage) and journal.is_file()
    reopened = optuna.load_study(study_name="s", storage=open_storage(str(journal)))  # as a trial's process would
    assert [(t.number, t.state, t.value) for t in reopened.trials] == [(0, TrialState.COMPLETE, 0.5)]
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'db' / 'optuna.db'}"), optuna.storages.RDBStorage)
