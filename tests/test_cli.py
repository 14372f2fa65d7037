"""The command line end to end on tiny configurations: files, resume, Ctrl-C, errors."""

import json
import shutil
import signal
import time
import types

import numpy as np
import pytest

import tinyvae as tv
from tinyvae import cli, report
from tinyvae import run as runs

# A dSprites beta-VAE small enough to train and evaluate in seconds.
TINY = ["--resolution", "16", "--hidden", "16", "--latent", "3", "--n-train", "256",
        "--batch-size", "32", "--quick-eval", "--quiet"]
DIGITS = ["--dataset", "digits", "--hidden", "16", "--latent", "2", "--batch-size", "100",
          "--no-report", "--quiet"]
FIGURES = {"traversal.png", "traversal.gif", "reconstructions.png", "samples.png",
           "kl_per_latent.png", "training_curves.png", "mutual_information.png", "latents.png"}


def train(*args):
    return cli.main(["train", *map(str, args)])


def params_of(folder):
    return tv.load(folder / runs.CHECKPOINT_FILE).params


def without_timings(rep):
    return {k: v for k, v in rep.items() if k not in report.TIMING_KEYS}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished tiny dSprites run, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    assert train(*TINY, "--steps", 24, "--out", folder) == 0
    return folder


def test_train_writes_every_file(tiny_run, capsys):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "status.json", "checkpoint.npz", "history.csv", "report.json",
            "report.md", "figures"} <= names
    assert FIGURES <= {p.name for p in (tiny_run / "figures").iterdir()}
    rep = json.loads((tiny_run / "report.json").read_text())
    assert set(report.REPORT_KEYS) | {"config"} <= set(rep)
    main = runs.RECIPES["dsprites"]
    assert (rep["config"]["model"], rep["config"]["beta"]) == ("beta-tcvae", main["beta"])
    assert rep["steps"] == 24 and len(rep["kl_per_latent"]) == 3
    assert 0 <= rep["mig"] <= 1 and 0 <= rep["beta_vae_score"] <= 1
    assert set(rep["factor_latent"]) == set(tv.datasets.DSprites.factor_names)
    assert json.loads((tiny_run / "status.json").read_text())["state"] == "finished"
    lines = (tiny_run / "history.csv").read_text().splitlines()
    assert lines[0].split(",")[:5] == ["epoch", "step", "loss", "recon", "kl"]
    assert int(lines[-1].split(",")[1]) == 24
    md = (tiny_run / "report.md").read_text()
    assert "Which latent encodes which factor" in md and "figures/traversal.png" in md
    # throughput beside its GEMM floor (timings: only their presence and sign are tested)
    t = rep["throughput"]
    assert t["images_per_second"] > 0 and t["floor_images_per_second"] > 0
    assert t["of_floor"] == pytest.approx(t["images_per_second"] / t["floor_images_per_second"],
                                          rel=1e-2)
    assert "Throughput:" in md and "of its floor" in md
    assert t["floor_timed"] == "during training" and "timed during training" in md


class _SleepingProbe:
    """A FloorProbe stand-in whose samples take `seconds` and report a fixed rate."""

    def __init__(self, seconds):
        self.seconds, self.rates = seconds, []

    def sample(self):
        time.sleep(self.seconds)
        self.rates.append(1e9)

    def rate(self):
        return 1e9


def test_step_clock_subtracts_probe_time_between_its_entries():
    probe = _SleepingProbe(0.05)
    clock = runs.StepClock(batch_size=1, probe=probe, probe_every=1)
    model = types.SimpleNamespace(step_=0)
    start = time.perf_counter()
    for k in range(3):
        model.step_ = k
        clock(model, {})
    assert time.perf_counter() - start >= 0.15
    # the entries are 0.05 s apart, all of it probing: the two probes before the last
    # entry are left out of the 2 steps' time, the last one (after it) is not inside
    assert clock.last[1] - clock.first[1] >= 0.1
    assert 2 / clock.images_per_second() < 0.01
    assert clock.floor_rate() == 1e9 and len(probe.rates) == 3


def test_evaluate_reproduces_the_report(tiny_run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_run, folder)
    before = json.loads((folder / "report.json").read_text())
    (folder / "report.json").unlink()
    shutil.rmtree(folder / "figures")
    assert cli.main(["evaluate", str(folder), "--quiet"]) == 0
    after = json.loads((folder / "report.json").read_text())
    assert without_timings(after) == without_timings(before)
    assert FIGURES <= {p.name for p in (folder / "figures").iterdir()}


def test_evaluate_states_the_protocol_of_every_number(tiny_run, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_run, folder)
    fast = json.loads((folder / "report.json").read_text())
    assert fast["protocol"] == "fast" and set(fast["disentanglement"]) == {"fast"}
    assert cli.main(["evaluate", str(folder), "--quiet", "--protocol", "both"]) == 0
    rep = json.loads((folder / "report.json").read_text())
    assert rep["protocol"] == "fast"
    assert set(rep["disentanglement"]) == set(rep["score_seconds"]) == {
        "fast", "disentanglement_lib"}
    ref = rep["disentanglement"]["disentanglement_lib"]
    assert ref["protocol"] == "disentanglement_lib" and ref["codes"] == "mean"
    assert ref["settings"]["dci"]["classifier"] == "gradient_boosting"
    assert rep["disentanglement"]["fast"]["mig"] == fast["mig"] == rep["mig"]
    md = (folder / "report.md").read_text()
    assert "| score | fast protocol | disentanglement_lib protocol |" in md
    assert "disentanglement_lib protocol:" in capsys.readouterr().out
    assert cli.main(["evaluate", str(folder), "--quiet", "--protocol",
                     "disentanglement_lib", "--codes", "sampled"]) == 0
    rep = json.loads((folder / "report.json").read_text())
    assert rep["protocol"] == "disentanglement_lib" and rep["eval"]["codes"] == "sampled"
    assert "sampled z ~ q(z|x) codes" in (folder / "report.md").read_text()
    with pytest.raises(SystemExit):
        cli.main(["evaluate", str(folder), "--protocol", "paper"])
    assert "invalid choice: 'paper'" in capsys.readouterr().err


def test_traverse_redraws_the_traversal(tiny_run, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_run, folder)
    shutil.rmtree(folder / "figures")
    assert cli.main(["traverse", str(folder), "--span", "2", "--columns", "5",
                     "--index", "3"]) == 0
    assert {"traversal.png", "traversal.gif"} == {p.name for p in (folder / "figures").iterdir()}
    with pytest.raises(SystemExit) as exc:
        cli.main(["traverse", str(folder), "--index", "99999"])
    assert exc.value.code == 2 and "argument --index" in capsys.readouterr().err


def test_resume_extends_a_finished_run_exactly(tmp_path):
    straight, twice = tmp_path / "straight", tmp_path / "twice"
    assert train(*DIGITS, "--steps", 30, "--out", straight) == 0
    assert train(*DIGITS, "--steps", 12, "--out", twice) == 0
    assert train("--resume", twice, "--steps", 30, "--quiet", "--no-report") == 0
    a, b = params_of(straight), params_of(twice)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((twice / "status.json").read_text())["step"] == 30
    assert not (twice / "report.json").exists()


def test_ctrl_c_saves_a_checkpoint_that_resume_continues_exactly(tmp_path, monkeypatch, capsys):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    args = [*TINY, "--steps", 20, "--no-report"]
    assert train(*args, "--out", straight) == 0

    # Press Ctrl-C (a real SIGINT, through fit's handler) during step 7.
    real_stop_at = runs.stop_at

    def ctrl_c_at_step_7(steps):
        stop = real_stop_at(steps)

        def callback(model, entry):
            if model.step_ == 7:
                signal.raise_signal(signal.SIGINT)
            stop(model, entry)
        return callback

    monkeypatch.setattr(runs, "log_interval", lambda steps: 1)
    monkeypatch.setattr(runs, "stop_at", ctrl_c_at_step_7)
    assert train(*args, "--out", cut) == cli.EXIT_INTERRUPTED
    assert f"tinyvae train --resume {cut}" in capsys.readouterr().err
    status = json.loads((cut / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] == 7
    assert not (cut / "report.json").exists()

    monkeypatch.setattr(runs, "stop_at", real_stop_at)
    assert train("--resume", cut, "--quiet", "--no-report") == 0
    a, b = params_of(straight), params_of(cut)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # the history too: the loss accumulated before Ctrl-C went into the checkpoint
    history_a = (straight / "history.csv").read_text().splitlines()
    history_b = (cut / "history.csv").read_text().splitlines()
    assert history_b == history_a
    assert json.loads((cut / "status.json").read_text())["state"] == "finished"


def test_resume_refuses_a_finished_run_and_changed_options(tiny_run, capsys):
    for argv, needle in ((["--resume", tiny_run], "already finished its 24 steps"),
                         (["--resume", tiny_run, "--beta", "2"], "argument --beta"),
                         (["--resume", tiny_run, "--dataset", "digits"], "argument --dataset")):
        with pytest.raises(SystemExit) as exc:
            train(*argv)
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err


def test_spiral_autoencoder_and_vae_runs(tmp_path):
    assert train("--dataset", "spiral", "--epochs", "2", "--n-train", "256", "--quiet",
                 "--out", tmp_path / "spiral") == 0
    rep = json.loads((tmp_path / "spiral" / "report.json").read_text())
    assert rep["config"]["likelihood"] == "gaussian" and rep["mig"] is None
    assert "spiral.png" in rep["figures"]
    assert train(*DIGITS[:-2], "--quick-eval", "--quiet", "--model", "ae", "--steps", 10,
                 "--out", tmp_path / "ae") == 0
    rep = json.loads((tmp_path / "ae" / "report.json").read_text())
    assert rep["elbo"] is None and rep["kl"] is None and rep["recon"] > 0


def test_missing_and_foreign_run_folders(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"lr": 0.1}))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = ((["evaluate", str(tmp_path / "nope")], "does not exist"),
             (["evaluate", str(foreign)], "not a tinyvae run folder"),
             (["traverse", str(empty)], "no config.json"),
             (["train", "--resume", str(tmp_path / "nope")], "argument --resume"))
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten_by_accident(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train(*TINY, "--steps", 2, "--out", tiny_run)
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(SystemExit):
        train(*TINY, "--steps", 2, "--out", other, "--overwrite")
    assert "not a tinyvae run folder" in capsys.readouterr().err
    assert (other / "todo.txt").read_text() == "mine"


@pytest.mark.parametrize("argv, needle", [
    (["--beta", "-1"], "argument --beta"),
    (["--steps", "0"], "argument --steps"),
    (["--lr", "abc"], "argument --lr"),
    (["--steps", "5", "--epochs", "2"], "argument --epochs: not allowed with argument --steps"),
    (["--dataset", "digits", "--resolution", "32"], "argument --resolution"),
    (["--resolution", "4"], "argument --resolution"),
    (["--model", "ae", "--beta", "2"], "argument --beta"),
    (["--model", "vae", "--capacity", "5"], "argument --capacity"),
    (["--model", "beta-vae", "--gamma", "10"], "argument --gamma"),
    (["--dataset", "imagenet"], "argument --dataset"),
    (["--optimizer", "rmsprop"], "argument --optimizer"),
])
def test_bad_arguments_give_argparse_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    # one line: the problem and where the options are listed (no usage dump)
    assert needle in err and "(see tinyvae train --help)" in err
    assert len(err.strip().splitlines()) == 1


def test_defaults_follow_the_data_set():
    main = runs.resolve_config({"dataset": "dsprites"})
    assert main["model"] == "beta-tcvae" and main["beta"] == 20.0 and main["latent"] == 10
    assert (main["decoder"], main["decoder_hidden"], main["batch_size"]) == ("broadcast", [32, 32], 128)
    assert main["alpha"] == 1.0 and main["gamma"] == 1.0 and main["estimator"] == "mws"
    assert main["steps"] is not None and main["epochs"] is None
    # the beta-VAE keeps the recipe it was tuned with
    bvae = runs.resolve_config({"dataset": "dsprites", "model": "beta-vae"})
    assert (bvae["beta"], bvae["optimizer"], bvae["batch_size"], bvae["steps"]) == (
        4.0, "adagrad", 64, 30_000)
    assert bvae["alpha"] is None and bvae["estimator"] is None
    vae = runs.resolve_config({"dataset": "dsprites", "model": "vae"})
    assert vae["beta"] == 1.0
    digits = runs.resolve_config({"dataset": "digits", "epochs": 3})
    assert digits["model"] == "vae" and digits["resolution"] is None and digits["epochs"] == 3
    adagrad = runs.resolve_config({"dataset": "digits", "optimizer": "adagrad"})
    assert adagrad["lr"] == 1e-2
    assert runs.log_interval(12000) == 120 and runs.log_interval(7) == 1
    assert 12000 % runs.log_interval(12000) == 0


def test_train_help_names_the_main_jobs_recipe(capsys, monkeypatch):
    """The help text is built from the recipe table, so it cannot fall behind it."""
    monkeypatch.setenv("COLUMNS", "400")      # no line breaks inside the names
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    main = runs.RECIPES["dsprites"]
    assert f"the main job, a {main['model']} (beta = {main['beta']:g})" in text
    assert f"default: {main['model']} for dsprites" in text
    assert f"default {main['estimator']} on dsprites" in text
