"""maskcls tune: the search space is checked before anything trains; trials are run directories; pruning,
a killed worker and two workers on a real PostgreSQL server leave a study that is whole."""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from helpers import TINY_SETS, tiny
from maskcls.cli import main
from maskcls.config_io import load_config, read_config
from maskcls.errors import ConfigError
from maskcls.fsutil import read_json
from maskcls.prep.prepared import load_prepared
from maskcls.tune.space import load_space, parse_space
from maskcls.tune.study import TuneSettings, run_study

SPACE = ("optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n"
         "loss.label_smoothing: {type: float, low: 0.0, high: 0.2}\n")


def _space(tmp_path: Path, text: str = SPACE) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def _tune_args(prepared, space, study_dir, trials, *extra, epochs=1) -> list[str]:
    sets = [a for s in TINY_SETS + [f"train.epochs={epochs}", "run.trackers=[]"] for a in ("--set", s)]
    return ["tune", str(prepared), "--space", str(space), "--trials", str(trials), "--study-dir", str(study_dir),
            *sets, *extra]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "maskcls", *args]


def _study(study_dir: Path, name: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name or study_dir.name, storage=f"sqlite:///{study_dir / 'study.db'}")


# ------------------------------------------------------------------ the space, before anything trains
@pytest.mark.parametrize("text, message", [
    ("optim.lrr: {type: float, low: 0.001, high: 0.01}", "did you mean 'optim.lr'"),
    ("data.image_size: {type: float, low: 96, high: 224}", "data.image_size takes int values"),
    ("model.name: {type: float, low: 1, high: 2}", "use type: categorical"),
    ("optim.lr: {type: float, low: 0.01, high: 0.001}", "low 0.01 is above high 0.001"),
    ("loss.label_smoothing: {type: float, low: 0.0, high: 0.7}", "out of range"),
    ("data.preset: {type: categorical, choices: [fast, fastest]}", "not a valid choice"),
    ("optim.lr: {type: float, low: 0.0, high: 0.01, log: true}", "log: true needs low > 0"),
    ("optim.lr: {type: flaot, low: 0.001, high: 0.01}", "did you mean 'float'"),
    ("optim.lr: {type: float, low: 0.001, hi: 0.01}", "unknown field(s) hi"),
    ("train.epochs: {type: int, low: 1.5, high: 3}", "expected a whole number"),
])
def test_space_errors_name_the_key_and_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError, match=None) as e:
        load_space(_space(tmp_path, text))
    assert message in str(e.value) and str(tmp_path / "space.yaml") in str(e.value)


def test_space_types_follow_the_config():
    params = {p.key: p for p in parse_space({"data.image_size": {"type": "int", "low": 96, "high": 224, "step": 32},
                                             "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                             "data.preset": {"type": "categorical", "choices": ["fast", "reference"]}})}
    assert params["data.image_size"].grid() == [96, 128, 160, 192, 224]
    assert params["optim.lr"].log and isinstance(params["optim.lr"].low, float)
    with pytest.raises(ConfigError, match="grid needs a step"):
        params["optim.lr"].grid()


def test_cli_refuses_a_bad_space_before_training(prepared_dir, tmp_path, capsys):
    space = _space(tmp_path, "optim.lrr: {type: float, low: 0.001, high: 0.01}\n")
    assert main(_tune_args(prepared_dir, space, tmp_path / "st", 2)) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()
    # a key both fixed and searched is a mistake too
    assert main(_tune_args(prepared_dir, _space(tmp_path), tmp_path / "st", 2, "--set", "optim.lr=0.01")) == 2
    assert "both fixed with --set and searched" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()


# ------------------------------------------------------------------ storages and stale trials
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials made with ask(), as a worker's would be
def test_running_trials_are_failed_only_when_their_worker_is_gone(tmp_path):
    """A trial of a live local process stays RUNNING; one of a dead local process fails at once; one of another
    machine fails once its heartbeat is older than twice --heartbeat (Optuna's heartbeat, RDB storages)."""
    from maskcls.tune.storage import (
        fail_dead_local_trials,
        fail_stale_trials,
        open_storage,
        storage_url,
        worker_identity,
    )
    storage = open_storage(storage_url(None, tmp_path), heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    attrs = {"live": worker_identity(), "dead": {**worker_identity(), "pid": int(dead.stdout)},
             "remote": {"host": "another-machine", "pid": os.getpid()}}
    trials = {}
    for name, a in attrs.items():
        trials[name] = study.ask()
        for k, v in a.items():
            trials[name].set_user_attr(k, v)
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study._study_id,
                                                                             trials["remote"].number))
    assert fail_dead_local_trials(study, storage) == [trials["dead"].number]
    time.sleep(3.5)  # the remote trial's heartbeat goes stale (grace: 2 x 1 s; SQLite keeps whole seconds)
    fail_stale_trials(study)
    states = {name: study.trials[t.number].state for name, t in trials.items()}
    assert states == {"live": TrialState.RUNNING, "dead": TrialState.FAIL, "remote": TrialState.FAIL}


def test_a_seeded_rerun_draws_new_points_and_repeats_itself(tmp_path):
    """Rerunning a seeded study (after Ctrl-C, or in chunks with --worker-trials) must not replay the first
    run's random draws: trial 1 of a rerun differs from trial 0, and the same reruns give the same points."""
    from maskcls.tune.study import open_study
    params = load_space(_space(tmp_path))

    def chunked(where: Path) -> list[dict]:
        for _ in range(2):  # two processes' worth: each opens the study anew and runs one trial
            study, _ = open_study(params, TuneSettings(where, trials=12, seed=7), steps=1)
            trial = study.ask()
            study.tell(trial, float(sum(abs(p.suggest(trial)) for p in params)))
        return [t.params for t in study.trials]

    first, again = chunked(tmp_path / "a"), chunked(tmp_path / "b")
    assert first[0] != first[1]
    assert first == again


def test_median_pruner_never_prunes_the_first_epoch():
    """Steps are 1-based epochs; epoch 1 is mostly warm-up (on agegender6dev its F1 spreads 0.24-0.40 over seeds
    of one config), so the median pruner may stop a trial from epoch 2 on, never at epoch 1."""
    from maskcls.tune.study import make_pruner
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", steps=3))
    for _ in range(5):
        t = study.ask()
        for step in (1, 2, 3):
            t.report(0.8, step)
        study.tell(t, 0.8)
    low = study.ask()
    low.report(0.1, 1)
    assert not low.should_prune()
    low.report(0.1, 2)
    assert low.should_prune()


def test_storage_urls_and_redaction(tmp_path):
    from maskcls.tune.storage import redact, storage_url
    assert storage_url(None, tmp_path) == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    assert storage_url("journal", tmp_path) == f"journal:{(tmp_path / 'study.journal').resolve()}"
    assert storage_url("postgresql://u:pw@h/db", tmp_path).split("://")[1] == "u:pw@h/db"
    assert "pw" not in redact(storage_url("postgresql://u:pw@h/db", tmp_path))
    with pytest.raises(ConfigError, match="give a database URL"):
        storage_url("study.db", tmp_path)


# ------------------------------------------------------------------ trials, pruning, outputs
@pytest.mark.slow
def test_pruned_trial_is_pruned_and_its_run_says_so(prepared_dir, tmp_path):
    """A pruner that prunes every epoch (F1 never reaches 1.01): the trial stops after its first epoch."""
    settings = TuneSettings(tmp_path / "st", trials=1, pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    study = run_study(tiny(train={"epochs": 3}, run={"trackers": []}), load_prepared(prepared_dir),
                      load_space(_space(tmp_path)), settings)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    run = Path(trial.user_attrs["run_dir"])
    assert run == (tmp_path / "st" / "trials" / "trial-0000").resolve()
    marker = read_json(run / "pruned.json")
    assert marker["pruned"] and marker["epoch"] == 1 and marker["trial"] == 0
    assert read_json(run / "run.json")["tune"]["state"] == "PRUNED"
    assert len(pd.read_csv(run / "fold0" / "metrics.csv")) == 1  # one epoch trained, not three
    assert not (run / "summary.json").exists()
    table = pd.read_csv(tmp_path / "st" / "trials.csv")
    assert table["state"].tolist() == ["PRUNED"] and table["epochs_reported"].tolist() == [1]
    assert not (tmp_path / "st" / "best.yaml").exists()  # no completed trial, no best config


@pytest.mark.slow
def test_cli_study_outputs_and_best_yaml_loads_for_train(prepared_dir, tmp_path, capsys):
    st = tmp_path / "st"
    assert main(_tune_args(prepared_dir, _space(tmp_path), st, 2, "--seed", "1", "--pruner", "none")) == 0
    out = capsys.readouterr().out
    assert "trial 0 (1/2):" in out and "trial 1 (2/2):" in out and "best:" in out
    study = _study(st)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    best = study.best_trial
    cfg = load_config(st / "best.yaml")  # what `maskcls train -c DIR/best.yaml` reads
    assert cfg.optim.lr == pytest.approx(best.params["optim.lr"])
    assert cfg.loss.label_smoothing == pytest.approx(best.params["loss.label_smoothing"])
    assert cfg.model.name == "test_efficientnet" and cfg.train.epochs == 1  # the fixed part too
    run = Path(best.user_attrs["run_dir"])
    assert read_config(run / "config.yaml").optim.lr == pytest.approx(cfg.optim.lr)
    assert read_json(run / "summary.json")["mean_f1"] == pytest.approx(best.value)
    assert read_json(run / "run.json")["tune"]["state"] == "COMPLETE"
    table = pd.read_csv(st / "trials.csv")
    assert table["number"].tolist() == [0, 1] and set(table["state"]) == {"COMPLETE"}
    assert {"optim.lr", "loss.label_smoothing", "duration_s", "run_dir"} <= set(table.columns)
    page = (st / "study.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and f'href="trials/{run.name}"' in page
    assert "src=\"http" not in page  # self-contained
    # best.yaml trains as it is
    assert main(["train", str(prepared_dir), "-c", str(st / "best.yaml"), "--folds", "0",
                 "--run-dir", str(tmp_path / "best-run")]) == 0
    assert read_config(tmp_path / "best-run" / "config.yaml").optim.lr == pytest.approx(cfg.optim.lr)
    # the study directory belongs to its study: another study there is refused before anything trains
    assert main(_tune_args(prepared_dir, _space(tmp_path), st, 3, "--study", "other")) == 2
    assert "holds the trials of study 'st'" in capsys.readouterr().err


# ------------------------------------------------------------------ a killed worker
def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the worker ended before {path} appeared"
        assert time.time() < end, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("storage, sig", [("sqlite", "SIGKILL"), ("journal", "SIGKILL"), ("journal", "SIGINT")])
def test_killed_worker_trial_fails_and_rerun_reaches_n(prepared_dir, tmp_path, storage, sig):
    """kill -9 (or Ctrl-C) during trial 1: that trial is FAIL, and the same command continues to 3 finished."""
    st = tmp_path / "st"
    args = _tune_args(prepared_dir, _space(tmp_path), st, 3, "--pruner", "none", "--heartbeat", "1",
                      *(["--storage", "journal"] if storage == "journal" else []), epochs=4)
    with open(tmp_path / "worker.err", "w") as log:  # a file, not a pipe nobody reads while it trains
        # A shell without job control starts background commands with SIGINT ignored, and Python keeps
        # an ignored SIGINT ignored: give the worker the default action so that Ctrl-C reaches it.
        worker = subprocess.Popen(_cli(args), stdout=subprocess.DEVNULL, stderr=log,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            _wait_for(st / "trials" / "trial-0001", worker)  # trial 0 done, trial 1 training
        finally:
            worker.send_signal(getattr(signal, sig))
            worker.wait(timeout=120)
    err = (tmp_path / "worker.err").read_text()
    if sig == "SIGINT":  # Ctrl-C: the worker marks its trial failed itself and says how to continue
        assert worker.returncode == 130 and "rerun the same command" in err and "Traceback" not in err
    rerun = subprocess.run(_cli(args), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    url = f"sqlite:///{st / 'study.db'}" if storage == "sqlite" else optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(st / "study.journal")))
    study = optuna.load_study(study_name="st", storage=url)
    states = {t.number: t.state for t in study.trials}
    assert states[1] == TrialState.FAIL  # the killed worker's trial
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 3
    assert sorted(states) == list(range(len(states)))
    assert ("marked FAIL" in rerun.stderr) == (sig == "SIGKILL")  # found dead on restart, or failed by the worker
    assert set(pd.read_csv(st / "trials.csv")["state"]) == {"COMPLETE", "FAIL"}


# ------------------------------------------------------------------ two workers on PostgreSQL
def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def postgres(request) -> str:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (trust auth), stopped and removed at the end."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install -e '.[dev]'")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's server is not installed (Debian: apt-get install postgresql; .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="maskcls-pg-"))  # under /tmp: the server's user must reach it
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the package's postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def pg(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(as_user + list(cmd), capture_output=True, text=True, timeout=120)

    init = pg(str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed here: {init.stderr.strip()[-300:]}")
    start = pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
               f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")

    def stop():
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
    request.addfinalizer(stop)
    assert start.returncode == 0, f"pg_ctl start failed: {start.stderr}\n{(root / 'log').read_text()[-2000:]}"
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(prepared_dir, tmp_path, postgres):
    n = 4
    workers = [subprocess.Popen(_cli(_tune_args(prepared_dir, _space(tmp_path), tmp_path / f"machine{i}", n,
                                                "--storage", postgres, "--study", "pg", "--pruner", "none",
                                                epochs=2)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in (1, 2)]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="pg", storage=postgres)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no number duplicated or lost
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n  # running trials count too, and a trial beyond n started ones is not run
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    runs = {t.number: Path(t.user_attrs["run_dir"]) for t in finished}
    assert all((r / "summary.json").is_file() for r in runs.values())
    by_machine = {i: {r for r in runs.values() if r.parent.parent.name == f"machine{i}"} for i in (1, 2)}
    assert by_machine[1] and by_machine[2], "both workers should have run trials"
    assert len(by_machine[1]) + len(by_machine[2]) == len(runs)
    ran = [t for t in study.trials if not t.user_attrs.get("surplus")]
    for i in (1, 2):  # each machine's outputs list the whole study (but the trials never run)
        assert len(pd.read_csv(tmp_path / f"machine{i}" / "trials.csv")) == len(ran)


# ------------------------------------------------------------------ foreign files, fixed settings, totals (issue 39)
def _tune_cases():
    from bad_inputs import cases, no_file
    return [c for c in cases(roles=("tune",)) if c.make is not no_file]


def _sha256(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", _tune_cases(), ids=lambda c: c.name)
def test_study_file_that_is_not_a_study_is_refused_unchanged(case, prepared_dir, tmp_path, capsys):
    """Another program's SQLite database or journal, garbage bytes, a file as --study-dir: one line naming the real
    cause, before anything trains, and the file is byte for byte what it was."""
    st, space = tmp_path / "st", _space(tmp_path)
    kept, extra = case.make(st)
    digest, listing = _sha256(kept), sorted(p.name for p in tmp_path.rglob("*"))
    assert main(_tune_args(prepared_dir, space, st, 2, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(case.reason, err) and str(kept) in err, err
    assert _sha256(kept) == digest  # not a table added, not a line appended
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing  # no trials/, no study.db beside it


class FakeObjective:
    """Stands in for a trial's training: the searched values suggested, then ``seconds`` of waiting."""
    seconds = 0.0
    interrupt = False

    def __init__(self, cfg, prep, params, **_):
        self.params = params

    def __call__(self, trial) -> float:
        values = [p.suggest(trial) for p in self.params]
        if self.interrupt:
            raise KeyboardInterrupt
        time.sleep(self.seconds)
        return float(abs(values[0]))


@pytest.fixture()
def fake_trials(monkeypatch):
    import maskcls.tune.study as study_module
    monkeypatch.setattr(study_module, "Objective", FakeObjective)
    monkeypatch.setattr(FakeObjective, "seconds", 0.0)
    monkeypatch.setattr(FakeObjective, "interrupt", False)
    return FakeObjective


def test_resuming_a_study_with_other_fixed_settings_is_refused(prepared_dir, tmp_path, capsys, fake_trials):
    """A rerun with another --set train.epochs (or data.image_size) would mix trials that do not compare: refused
    naming each setting that differs, the study unchanged; where a run's files go (run.*) may change."""
    st, space = tmp_path / "st", _space(tmp_path)
    assert main(_tune_args(prepared_dir, space, st, 1)) == 0
    capsys.readouterr()
    for extra, differs in ((["--set", "train.epochs=2"], "train.epochs 1 (now 2)"),
                           (["--set", "data.image_size=96"], "data.image_size 64 (now 96)")):
        assert main(_tune_args(prepared_dir, space, st, 2) + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"maskcls: error: study 'st' in sqlite:///{st / 'study.db'} was run with other fixed "
                              f"settings: {differs}") and len(err.strip().splitlines()) == 1, err
        assert "new --study-dir" in err
        assert len(_study(st).trials) == 1
    assert main(_tune_args(prepared_dir, space, st, 2, "--set", "run.report=true")) == 0
    assert len(_study(st).trials) == 2


def test_workers_sharing_a_study_run_exactly_the_trials_asked(prepared_dir, tmp_path, fake_trials):
    """Two workers whose trials end together, --trials 3: each used to count finished trials only, so both started
    a third (4 in all); now a worker counts running trials too, and a trial numbered after 3 started ones is not
    run, so the study has exactly 3 finished trials whatever the timing."""
    import threading
    fake_trials.seconds = 0.5
    settings = TuneSettings(tmp_path / "st", trials=3, pruner="none")
    args = (tiny(run={"trackers": []}), load_prepared(prepared_dir), load_space(_space(tmp_path)), settings)
    errors: list[BaseException] = []

    def worker():
        try:
            run_study(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    study = _study(tmp_path / "st")
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    surplus = [t for t in study.trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL and not t.params for t in surplus)  # never run
    assert len(pd.read_csv(tmp_path / "st" / "trials.csv")) == 3


def test_ctrl_c_on_a_tune_worker_is_one_line(prepared_dir, tmp_path):
    """Ctrl-C during a trial (a worker process whose trial raises KeyboardInterrupt): exit 130, the trial marked
    failed, and one line on stderr (Optuna printed its 'Trial 0 failed' warning with a 40-line traceback first,
    then one warning per figure it could not draw)."""
    worker = tmp_path / "worker.py"
    here, tests = Path(__file__).parent, Path(__file__).parents[1]  # test_tune itself, and helpers beside conftest
    worker.write_text(f"import sys\nsys.path[:0] = [{str(here)!r}, {str(tests)!r}]\n"
                      "import maskcls.tune.study as study_module\nfrom test_tune import FakeObjective\n"
                      "FakeObjective.interrupt = True\nstudy_module.Objective = FakeObjective\n"
                      "from maskcls.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    st = tmp_path / "st"
    r = subprocess.run([sys.executable, str(worker), *_tune_args(prepared_dir, _space(tmp_path), st, 2)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == ["interrupted: the running trial is marked failed; rerun the same command "
                                             "to continue the study to 2"], r.stderr
    assert [t.state for t in _study(st).trials] == [TrialState.FAIL]
