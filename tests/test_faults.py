"""Faults and bad input (issue 14): every one a named error; no run ever lost or mixed up.

Signals are real (SIGINT, SIGTERM, SIGKILL sent to a `tinyvae train` subprocess);
the tests wait for files the run writes, never for fixed times, so a loaded machine
only makes them slower.
"""

import io as stdio
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tinyvae as tv
from tinyvae import cli, training
from tinyvae import run as runs
from tinyvae.datasets import downloads
from tinyvae.datasets import mnist as mnist_module

ROOT = Path(tv.__file__).resolve().parents[1]
DIGITS = ["--dataset", "digits", "--hidden", "16", "--latent", "2", "--batch-size", "100",
          "--no-report", "--quiet"]
#: a run far longer than any test waits for, checkpointing often
LONG = [*DIGITS, "--steps", 10_000_000, "--checkpoint-every", 20]
TIMEOUT = 900  # seconds; only reached if something is broken (or the machine is stalled)


def train(*args):
    return cli.main(["train", *map(str, args)])


def spawn(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tinyvae.cli", "train", *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def status_of(folder):
    try:
        return json.loads((Path(folder) / runs.STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def wait_for_checkpoint(proc, folder, step):
    """Wait until the subprocess's run has checkpointed at or after ``step``."""
    deadline = time.monotonic() + TIMEOUT
    while (status_of(folder).get("checkpoint_step") or 0) < step:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within the timeout")
        time.sleep(0.05)


def finish(proc):
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def training_arrays(folder):
    """Parameters and optimizer state of a run folder's checkpoint."""
    m = tv.load(Path(folder) / runs.CHECKPOINT_FILE)
    return m.step_, {**m.params, **{f"opt/{k}": v for k, v in m.optimizer_.state_arrays().items()}}


def assert_same_training(a, b):
    step_a, arrays_a = training_arrays(a)
    step_b, arrays_b = training_arrays(b)
    assert step_a == step_b and arrays_a.keys() == arrays_b.keys()
    different = [k for k in arrays_a if not np.array_equal(arrays_a[k], arrays_b[k])]
    assert not different, f"arrays differ from the straight run: {different}"


def assert_resume_equals_straight(folder, step, tmp_path):
    """Resume ``folder`` for 25 more steps; compare with a run straight to that step."""
    assert train("--resume", folder, "--steps", step + 25, "--quiet", "--no-report") == 0
    straight = tmp_path / "straight"
    assert train(*DIGITS, "--steps", step + 25, "--out", straight) == 0
    assert_same_training(folder, straight)


# ---------------------------------------------------------------------------------------
# signals: SIGINT twice, SIGTERM, SIGKILL; then resume equals a straight run bit for bit
# ---------------------------------------------------------------------------------------


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(tmp_path):
    run = tmp_path / "killed"
    proc = spawn(*LONG, "--out", run)
    wait_for_checkpoint(proc, run, 40)
    proc.kill()
    finish(proc)
    status = status_of(run)
    assert status["state"] == "running"   # killed outright: nothing could say otherwise
    step = status["checkpoint_step"]
    assert step >= 40 and step % 20 == 0
    # the checkpoint is written before status.json, so a kill between the two leaves the
    # checkpoint one interval ahead of what the status says; never behind it
    saved = tv.load(run / runs.CHECKPOINT_FILE).step_
    assert saved in (step, step + 20)
    assert_resume_equals_straight(run, saved, tmp_path)


def test_sigterm_stops_at_a_whole_step_and_saves(tmp_path):
    run = tmp_path / "terminated"
    proc = spawn(*LONG, "--out", run)
    wait_for_checkpoint(proc, run, 20)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM)" in err and f"--resume {run}" in err
    status = status_of(run)
    assert status["state"] == "interrupted" and status["signal"] == "SIGTERM"
    assert status["step"] == status["checkpoint_step"] >= 20
    assert_resume_equals_straight(run, status["step"], tmp_path)


def test_two_quick_ctrl_c_save_the_state_of_the_last_whole_step(tmp_path):
    # wider layers make a step last long enough for the second SIGINT to land inside one
    wide = [*DIGITS, "--hidden", "256", "256"]
    run = tmp_path / "ctrl-c"
    proc = spawn(*wide, "--steps", 10_000_000, "--checkpoint-every", 20, "--out", run)
    wait_for_checkpoint(proc, run, 20)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    assert code == cli.EXIT_INTERRUPTED and "Traceback" not in err
    status = status_of(run)
    assert status["state"] == "interrupted" and status["step"] == status["checkpoint_step"]
    step = status["step"]
    assert train("--resume", run, "--steps", step + 5, "--quiet", "--no-report") == 0
    straight = tmp_path / "straight"
    assert train(*wide, "--steps", step + 5, "--out", straight) == 0
    assert_same_training(run, straight)


def noisy_mask(x, rng):
    """A denoising corruption: it draws from the run's generator, like eps does."""
    return x * (rng.random(x.shape) > 0.2)


def test_a_second_signal_inside_a_step_abandons_it_and_keeps_its_noise(tmp_path):
    # the exact failure of the issue: the second Ctrl-C lands after this step's draws
    X = tv.datasets.load_digits()[0][:200]
    kwargs = dict(steps=12, batch_size=32, seed=3, progress=False, corrupt=None)

    def twice_at_step_5(x, rng):
        out = noisy_mask(x, rng)
        if model.step_ == 5:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)   # "stop now": raised right here
        return out

    model = tv.VAE(64, (16,), 2, seed=1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, **{**kwargs, "corrupt": twice_at_step_5})
    assert model.step_ == 5
    path = model.save(tmp_path / "cut")
    resumed = tv.load(path).fit(X, steps=12, progress=False, corrupt=noisy_mask, resume=True)
    straight = tv.VAE(64, (16,), 2, seed=1).fit(X, **{**kwargs, "corrupt": noisy_mask})
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])


def test_periodic_checkpoints_change_no_number(tmp_path):
    X = tv.datasets.load_digits()[0][:300]
    plain = tv.VAE(64, (16,), 2, seed=0).fit(X, steps=40, batch_size=32, progress=False,
                                             log_every=3)
    saved = []

    def save(model):
        saved.append(model.step_)
        model.save(tmp_path / f"at{model.step_}")

    every = tv.VAE(64, (16,), 2, seed=0).fit(
        X, steps=40, batch_size=32, progress=False, log_every=3,
        checkpoint=training.Checkpointer(save, every=7))
    assert saved == [7, 14, 21, 28, 35]
    for k in plain.params:
        np.testing.assert_array_equal(every.params[k], plain.params[k])
    assert every.history_ == plain.history_
    # each periodic checkpoint resumes to the same end, history included
    resumed = tv.load(tmp_path / "at21.npz").fit(X, steps=40, progress=False, log_every=3,
                                                resume=True)
    for k in plain.params:
        np.testing.assert_array_equal(resumed.params[k], plain.params[k])
    assert resumed.history_ == plain.history_


def test_the_default_checkpoint_interval_is_a_few_per_run():
    assert runs.checkpoint_interval(30_000) == 7500
    assert runs.checkpoint_interval(3) == 1


# ---------------------------------------------------------------------------------------
# one writer per run folder; config and checkpoint always of one run
# ---------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_told_the_holders_pid(tmp_path, capsys):
    run = tmp_path / "busy"
    proc = spawn(*LONG, "--out", run)
    try:
        wait_for_checkpoint(proc, run, 20)
        for argv in ([*DIGITS, "--steps", 30, "--out", run, "--overwrite"],
                     ["--resume", run, "--steps", 10_000_000, "--quiet", "--no-report"]):
            with pytest.raises(SystemExit) as exc:
                train(*argv)
            assert exc.value.code == 2
            err = capsys.readouterr().err
            assert f"pid {proc.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc)
    model = runs.load_model(run)   # config.json and checkpoint.npz are of the same run
    assert model.step_ == status_of(run)["step"]


def test_a_run_that_appeared_meanwhile_is_not_replaced_without_overwrite(tmp_path):
    run = tmp_path / "run"
    assert train(*DIGITS, "--steps", 5, "--out", run) == 0
    config = runs.read_config(run)
    with pytest.raises(runs.RunError, match="already holds a run"):
        runs.train_run(run, {**config, "steps": 9}, resume=False, progress=False,
                       overwrite=False)
    assert tv.load(run / runs.CHECKPOINT_FILE).step_ == 5


def test_a_folder_mixing_two_runs_is_refused(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(*DIGITS, "--steps", 5, "--out", a) == 0
    assert train(*DIGITS[:2], "--hidden", "8", *DIGITS[4:], "--steps", 5, "--out", b) == 0
    shutil.copy(b / runs.CHECKPOINT_FILE, a / runs.CHECKPOINT_FILE)
    for argv in (["evaluate", str(a)], ["train", "--resume", str(a), "--steps", "9"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "does not belong to its config.json (hidden: [16]" in err
        assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------
# --overwrite replaces a run only once the new one has a checkpoint
# ---------------------------------------------------------------------------------------


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != runs.LOCK_FILE}


class Offline:
    def open(self, url, timeout=None):
        raise urllib.error.URLError("no network")


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path, monkeypatch,
                                                                   capsys):
    run = tmp_path / "run"
    assert train(*DIGITS, "--steps", 5, "--out", run) == 0
    before = files_of(run)
    monkeypatch.setenv("TINYVAE_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(downloads, "_opener", Offline())
    assert train("--dataset", "mnist", "--steps", 5, "--quiet", "--no-report",
                 "--out", run, "--overwrite") == 1
    err = capsys.readouterr().err
    assert "could not download" in err and "previous run" in err
    assert files_of(run) == before
    # diverging before its first checkpoint: the new run failed, the old one is back
    assert train(*DIGITS, "--optimizer", "sgd", "--lr", 1000, "--steps", 2000,
                 "--out", run, "--overwrite") == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "previous run" in err and "Traceback" not in err
    assert files_of(run) == before
    assert not (run / runs.PREVIOUS_DIR).exists()


def test_overwrite_replaces_the_run_once_the_new_one_has_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert train(*DIGITS, "--steps", 5, "--out", run) == 0
    assert train(*DIGITS, "--steps", 9, "--out", run, "--overwrite") == 0
    assert tv.load(run / runs.CHECKPOINT_FILE).step_ == 9
    assert runs.read_config(run)["steps"] == 9 and not (run / runs.PREVIOUS_DIR).exists()


def test_a_replacement_killed_before_its_checkpoint_gives_the_old_run_back(tmp_path):
    run = tmp_path / "run"
    assert train(*DIGITS, "--steps", 5, "--out", run) == 0
    before = files_of(run)
    runs._set_aside(run)   # what a killed --overwrite leaves: the old run aside, no checkpoint
    runs.write_config(run, {"dataset": "digits"})
    with runs.run_lock(run):
        runs._recover_aside(run)
    assert files_of(run) == before


# ---------------------------------------------------------------------------------------
# the command line: one line, exit 2 for a user error, 1 for a failed run
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "digits"
    assert train(*DIGITS, "--steps", 5, "--out", folder) == 0
    return folder


def copy_run(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(runs.LOCK_FILE))
    return dst


def truncate_checkpoint(folder):
    path = folder / runs.CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:500])


def garbage_status(folder):
    (folder / runs.STATUS_FILE).write_text("{not json")


# (name, prepare the copied run folder, argv with {run} / {file}, exit status, needle)
CLI_CASES = [
    ("evaluate, truncated checkpoint", truncate_checkpoint, ["evaluate", "{run}"], 2,
     "cannot be loaded"),
    ("traverse, truncated checkpoint", truncate_checkpoint, ["traverse", "{run}"], 2,
     "cannot be loaded"),
    ("resume, truncated checkpoint", truncate_checkpoint,
     ["train", "--resume", "{run}", "--steps", "9"], 2, "cannot be loaded"),
    ("evaluate, garbage status.json", garbage_status, ["evaluate", "{run}"], 2,
     "status.json' is damaged"),
    ("resume, garbage status.json", garbage_status,
     ["train", "--resume", "{run}", "--steps", "9"], 2, "status.json' is damaged"),
    ("--out below a file", None, ["train", *DIGITS, "--steps", "2", "--out", "{file}/sub"], 2,
     "is a file"),
    ("--resolution 100000", None, ["train", "--resolution", "100000", "--quiet"], 2,
     "argument --resolution: this run needs about"),
    ("--hidden 100000 100000", None,
     ["train", "--dataset", "digits", "--hidden", "100000", "100000"], 2,
     "argument --hidden: this run needs about"),
    ("sgd lr 1000 diverges", None,
     ["train", *DIGITS, "--optimizer", "sgd", "--lr", "1000", "--steps", "500",
      "--checkpoint-every", "1000", "--out", "{new}"], 1, "training diverged"),
]


@pytest.mark.parametrize("name, prepare, argv, code, needle", CLI_CASES,
                         ids=[c[0] for c in CLI_CASES])
def test_cli_faults_are_one_line_and_an_exit_status(name, prepare, argv, code, needle,
                                                    digits_run, tmp_path, capsys):
    run = copy_run(digits_run, tmp_path / "run")
    if prepare is not None:
        prepare(run)
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = [a.format(run=run, file=afile, new=tmp_path / "new") for a in argv]
    try:
        got = cli.main(argv)
    except SystemExit as exc:
        got = exc.code
    err = capsys.readouterr().err
    assert got == code, err
    assert needle in err and "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err


def test_a_diverged_run_says_so_in_status_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(*DIGITS, "--optimizer", "sgd", "--lr", 1000, "--steps", 500,
                 "--checkpoint-every", 1000, "--out", run) == 1
    status = status_of(run)
    assert status["state"] == "failed" and "training diverged" in status["error"]
    assert status["checkpoint_step"] is None
    assert "no checkpoint was written" in capsys.readouterr().err


def test_an_unknown_backend_is_one_line_not_an_import_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TINYVAE_BACKEND": "bogus"}
    done = subprocess.run([sys.executable, "-m", "tinyvae.cli", "train", "--help"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("tinyvae: error: TINYVAE_BACKEND: expected one of "
                                   "('numba', 'numpy'), got 'bogus' (unset it, or set it to "
                                   "one of these)")
    # the library imports, and names the variable when a kernel is first asked for
    done = subprocess.run([sys.executable, "-c", "import tinyvae as tv, numpy as np; "
                           "tv.kernels.matmul(np.ones((2, 2)), np.ones((2, 2)))"],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
        "ValueError: TINYVAE_BACKEND: expected one of")


def test_a_cache_entry_that_is_a_directory_is_named(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    (cache / "mnist" / "train-images-idx3-ubyte.gz").mkdir(parents=True)
    monkeypatch.setenv("TINYVAE_DATA", str(cache))
    assert train("--dataset", "mnist", "--steps", 2, "--quiet", "--no-report",
                 "--out", tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert "is a directory, expected the data file" in err and "Traceback" not in err
    with pytest.raises(tv.datasets.DatasetError, match="is a directory"):
        tv.datasets.load_mnist("train", data_dir=cache)


def test_memory_check_names_the_option_and_the_size():
    config = runs.resolve_config({"dataset": "dsprites"})
    with pytest.raises(runs.UsageError, match=r"needs about .* GiB") as info:
        runs.check_memory(config, available=2**20)
    assert info.value.option == "--n-train"
    runs.check_memory(config, available=2**40)   # the main job fits in a terabyte


# ---------------------------------------------------------------------------------------
# downloads
# ---------------------------------------------------------------------------------------


def test_a_killed_downloads_part_file_is_removed_by_the_next_load(tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    name = "t10k-images-idx3-ubyte.gz"   # the first file load_mnist("test") fetches
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()   # a pid that no longer runs
    stale = folder / f".{name}.abc123.{dead.pid}.part"
    old_style = folder / f".{name}.xyz.part"
    alive = folder / f".{name}.def456.{os.getpid()}.part"
    for path in (stale, old_style, alive):
        path.write_bytes(b"partial")
    monkeypatch.setattr(downloads, "_opener", Offline())
    with pytest.raises(tv.datasets.DownloadError):
        tv.datasets.load_mnist("test", data_dir=tmp_path / "cache")
    assert not stale.exists() and not old_style.exists()
    assert alive.exists()   # a download still running in a live process keeps its file


# ---------------------------------------------------------------------------------------
# checkpoints: every byte flip, and damaged headers
# ---------------------------------------------------------------------------------------


def small_checkpoint(tmp_path):
    X = np.random.default_rng(0).random((20, 2)).astype(np.float32)
    model = tv.VAE(2, (), 1, seed=0)
    model.fit(X, steps=3, batch_size=8, optimizer=tv.Adagrad(lr=0.1), progress=False,
              log_every=1)
    return model.save(tmp_path / "small.npz")


def snapshot(model):
    return (model.get_config(), model.step_, json.dumps(model.history_),
            json.dumps(model.train_state_), model.optimizer_.config(), model.optimizer_.t,
            {k: v.tobytes() for k, v in model.params.items()},
            {k: v.tobytes() for k, v in model.optimizer_.state_arrays().items()})


def test_every_byte_flip_loads_identically_or_raises_value_error(tmp_path):
    path = small_checkpoint(tmp_path)
    good = path.read_bytes()
    reference = snapshot(tv.load(path))
    flipped = tmp_path / "flipped.npz"
    outcomes = {"identical": 0, "ValueError": 0}
    for i in range(len(good)):
        flipped.write_bytes(good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1:])
        try:
            model = tv.load(flipped)
        except ValueError:
            outcomes["ValueError"] += 1
            continue
        assert snapshot(model) == reference, f"byte {i} flipped loads different numbers"
        outcomes["identical"] += 1
    assert sum(outcomes.values()) == len(good)
    assert outcomes["ValueError"] > 0 and outcomes["identical"] > 0


def rewrite_header(path, dst, edit):
    """Copy checkpoint ``path`` to ``dst`` with its JSON header changed by ``edit(header)``."""
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(arrays.pop("__header__").tobytes())
    header = edit(header)
    blob = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(dst, __header__=blob, **arrays)
    return dst


def _set(key, value):
    def edit(h):
        h[key] = value
        return h
    return edit


def _set_state(key, value):
    def edit(h):
        h["train_state"][key] = value
        return h
    return edit


def _without(key):
    def edit(h):
        del h[key]
        return h
    return edit


HEADER_CASES = {
    "a JSON list": (lambda h: [h], "is not a tinyvae checkpoint"),
    "no sha256": (_without("sha256"), "'sha256' is None"),
    "an extra config key": (lambda h: {**h, "config": {**h["config"], "colour": "red"}},
                            "has a config VAE does not accept"),
    "train_state a string": (_set("train_state", "garbage"), "'train_state' is 'garbage'"),
    "train_state rng garbage": (_set_state("rng", {"state": 1}), "'rng' is not a generator"),
    "train_state batch_size -3": (_set_state("batch_size", -3), "'batch_size' is -3"),
    "train_state accumulator a list": (_set_state("accumulator", [1]), "'accumulator'"),
    "version 0": (_set("format_version", 0), "format version 0"),
    "version -5": (_set("format_version", -5), "format version -5"),
    "version true": (_set("format_version", True), "format version True"),
    "version 99": (_set("format_version", 99), "upgrade tinyvae"),
    "step a string": (_set("step", "3"), "'step' is '3'"),
    "history a list": (_set("history", []), "'history' is []"),
    "optimizer t negative": (lambda h: {**h, "optimizer": {**h["optimizer"], "t": -1}},
                             "step count t >= 0"),
    "optimizer unknown class": (lambda h: {**h, "optimizer": {
        **h["optimizer"], "config": {"class": "Lion", "lr": 0.1}}}, "optimizer config"),
    "model class unknown": (_set("model_class", "GAN"), "unknown model class"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_a_damaged_header_is_a_value_error_naming_the_field(case, tmp_path):
    edit, needle = HEADER_CASES[case]
    bad = rewrite_header(small_checkpoint(tmp_path), tmp_path / "bad.npz", edit)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        tv.load(bad)


def test_unknown_zip_compression_is_a_value_error(tmp_path):
    path = small_checkpoint(tmp_path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(stdio.BytesIO(bytes(raw))) as z:
        first = z.infolist()[0]
    # the central directory's compression method of the first member: 99 (AES), unknown
    central = raw.index(b"PK\x01\x02")
    raw[central + 10:central + 12] = struct.pack("<H", 99)
    assert first.compress_type == 0
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="truncated or corrupted"):
        tv.load(path)


# ---------------------------------------------------------------------------------------
# the library's inputs
# ---------------------------------------------------------------------------------------


def test_numpy_scalars_are_accepted_and_saved(tmp_path):
    model = tv.VAE(4, (3,), 2, beta=np.float32(2), seed=np.int64(3))
    assert model.seed == 3 and type(model.seed) is int and model.beta == 2.0
    loaded = tv.load(model.save(tmp_path / "m"))
    assert loaded.get_config() == model.get_config()
    opt = tv.Adam(lr=np.float32(1e-3))
    assert type(opt.lr) is float
    tv.BetaVAE(4, (3,), 2, capacity_max=np.float64(5), gamma=np.int32(10))


@pytest.mark.parametrize("kwargs, needle", [
    (dict(hidden=None), "hidden: expected a positive integer or a sequence"),
    (dict(hidden=(3, 0)), "hidden: expected a positive integer, got 0"),
    (dict(seed=None), "seed: expected an integer >= 0"),
    (dict(seed=-1), "seed: expected an integer >= 0"),
    (dict(seed=1.5), "seed: expected an integer >= 0"),
    (dict(beta=True), "beta: expected a finite number >= 0"),
    (dict(beta=np.float32("nan")), "beta: expected a finite number >= 0"),
])
def test_bad_model_arguments_name_themselves(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        tv.VAE(4, **kwargs)


def test_resume_refuses_options_it_would_ignore(tmp_path):
    X = np.random.default_rng(0).random((40, 4)).astype(np.float32)
    model = tv.VAE(4, (3,), 2).fit(X, steps=3, batch_size=8, progress=False)
    loaded = tv.load(model.save(tmp_path / "m"))
    with pytest.raises(ValueError, match="batch_size: the run being resumed has batch_size=8"):
        loaded.fit(X, steps=6, resume=True, batch_size=5, progress=False)
    with pytest.raises(ValueError, match="optimizer: not allowed with resume=True"):
        loaded.fit(X, steps=6, resume=True, optimizer=tv.SGD(lr=0.1), progress=False)
    with pytest.raises(ValueError, match="seed: the run being resumed has seed=0"):
        loaded.fit(X, steps=6, resume=True, seed=4, progress=False)
    loaded.fit(X, steps=6, resume=True, batch_size=8, seed=0, progress=False)  # same: fine
    assert loaded.step_ == 6


def test_overflow_is_called_overflow():
    model = tv.VAE(4, (3,), 2, likelihood="gaussian")
    with pytest.raises(ValueError, match=r"x: values up to 1e\+300 overflow float32"):
        model.loss(np.full((2, 4), 1e300))
    with pytest.raises(ValueError, match="expected finite values, got NaN or inf"):
        model.loss(np.full((2, 4), np.inf))
    with pytest.raises(FloatingPointError, match=r"x: the loss is .* overflows float32"):
        model.loss(np.full((2, 4), 1e30))
    assert np.isfinite(model.loss(np.full((2, 4), 0.5))[0])


def test_read_idx_sizes_do_not_overflow(tmp_path):
    # 2^31 x 2^31 x 2^31 x 3 wraps a 64-bit product (to 0): the size check must not wrap
    path = tmp_path / "huge.idx"
    path.write_bytes(b"\x00\x00\x08\x04" + struct.pack(">IIII", 2**31, 2**31, 2**31, 3)
                     + b"\x00" * 10)
    with pytest.raises(tv.datasets.DatasetError, match="is truncated: shape"):
        mnist_module.read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x02" + struct.pack(">II", 2**31, 3) + b"\x00" * 10)
    with pytest.raises(tv.datasets.DatasetError, match="needs 6442450956 bytes"):
        mnist_module.read_idx(path)


def test_deferred_interrupt_with_defer_never_raises_inside_the_block():
    """run.py saves the final checkpoint under defer=True: a second Ctrl-C there must not
    abandon the save; it is only recorded."""
    try:
        with training.deferred_interrupt(defer=True) as flag:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)                   # let the handler run
    except KeyboardInterrupt:
        pytest.fail("a second SIGINT raised inside deferred_interrupt(defer=True)")
    assert flag["hit"] and flag["signal"] == "SIGINT"
    with pytest.raises(KeyboardInterrupt), training.deferred_interrupt() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)


def test_no_signal_falls_between_the_training_loop_and_the_final_save():
    """The run saver's deferred context encloses the training loop's: a Ctrl-C that lands
    after the loop's context ended (it stopped on a first Ctrl-C) and before the save is
    recorded, never raised by Python's default handler (this lost the final save of
    test_two_quick_ctrl_c_save_the_state_of_the_last_whole_step now and then)."""
    try:
        with training.deferred_interrupt(defer=True) as outer:
            with training.deferred_interrupt() as inner:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
            assert inner["hit"] and outer["hit"] and outer["signal"] == "SIGTERM"
            os.kill(os.getpid(), signal.SIGINT)       # the window: must only be recorded
            time.sleep(0.01)
    except KeyboardInterrupt:
        pytest.fail("a SIGINT between two nested deferred_interrupt contexts raised")
    assert outer["signal"] == "SIGTERM"                # the first signal names the stop


def test_a_signal_before_the_training_loop_stops_it_after_one_step():
    """A Ctrl-C that arrives while the saver's context is open but the loop's is not yet
    (data checks, set-up) is handed to the loop, which stops after its first step."""
    X = np.random.default_rng(0).random((64, 8))
    m = tv.VAE(8, (4,), 2, seed=0)
    with training.deferred_interrupt(defer=True) as outer:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        with pytest.raises(training.Interrupted):
            m.fit(X, steps=50, batch_size=8, progress=False, seed=0)
    assert outer["hit"] and m.step_ == 1
