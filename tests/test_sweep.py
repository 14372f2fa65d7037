"""tinyvae sweep, the beta-TCVAE on the command line, and the shape-fidelity score."""

import csv
import json

import numpy as np
import pytest

import tinyvae as tv
from tinyvae import cli, metrics, sweep
from tinyvae import run as runs

TINY_TC = ["--model", "beta-tcvae", "--resolution", "16", "--hidden", "16", "--latent", "3",
           "--n-train", "256", "--batch-size", "32", "--steps", "16", "--quick-eval"]


@pytest.mark.parametrize(("text", "seeds"), [("0-4", [0, 1, 2, 3, 4]), ("2", [2]),
                                             ("0,3,7", [0, 3, 7]), ("1-2,5", [1, 2, 5])])
def test_parse_seeds(text, seeds):
    assert sweep.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "1,1", "0-2,2"])
def test_parse_seeds_refuses(text):
    with pytest.raises(ValueError, match="seeds: expected"):
        sweep.parse_seeds(text)


def test_train_beta_tcvae_names_its_objective(tmp_path, capsys):
    folder = tmp_path / "tc"
    assert cli.main(["train", *TINY_TC, "--beta", "8", "--estimator", "mws", "--quiet",
                     "--out", str(folder)]) == 0
    assert "beta-tcvae (alpha=1, beta=8, gamma=1, mws)" in capsys.readouterr().out
    rep = json.loads((folder / "report.json").read_text())
    assert rep["config"]["model"] == "beta-tcvae" and rep["config"]["estimator"] == "mws"
    assert 0 <= rep["shape_kept"] <= 1
    model = tv.load(folder / runs.CHECKPOINT_FILE)
    assert isinstance(model, tv.BetaTCVAE) and model.dataset_size == 256 and model.beta == 8
    assert "beta-tcvae (alpha=1, beta=8" in (folder / "report.md").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "beta-vae", "--alpha", "2"], "argument --alpha: only the beta-TCVAE"),
    (["--model", "vae", "--estimator", "mss"], "argument --estimator: only the beta-TCVAE"),
    (["--model", "beta-tcvae", "--capacity", "5"], "argument --capacity: only the beta-VAE"),
    (["--model", "beta-vae", "--capacity", "5", "--gamma", "0"], "argument --gamma: the capacity"),
])
def test_train_refuses_options_of_another_objective(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *args, "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_sweep_reproduces_single_runs(tmp_path, capsys):
    root = tmp_path / "sweep"
    assert cli.main(["sweep", "--seeds", "0-1", "--jobs", "1", "--root", str(root), *TINY_TC]) == 0
    out = capsys.readouterr().out
    assert "| **median** |" in out
    with open(root / "sweep.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["seed"] for r in rows] == ["0", "1"] and tuple(rows[0]) == sweep.COLUMNS
    assert all(0 <= float(r["udr"]) <= 1 for r in rows)      # each run scored by the other
    assert (root / "sweep.png").stat().st_size > 0
    md = (root / "sweep.md").read_text()
    assert "| **min** |" in md and "| **max** |" in md
    # each seed's run is the run tinyvae train --seed S makes, bit for bit
    single = tmp_path / "single"
    assert cli.main(["train", *TINY_TC, "--seed", "1", "--quiet", "--no-report",
                     "--out", str(single)]) == 0
    a = tv.load(root / "seed1" / runs.CHECKPOINT_FILE).params
    b = tv.load(single / runs.CHECKPOINT_FILE).params
    assert all(np.array_equal(a[k], b[k]) for k in a)
    rep = json.loads((root / "seed1" / "report.json").read_text())
    assert float(rows[1]["mig"]) == pytest.approx(rep["mig"])


def test_sweep_refuses_a_single_seed_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--seed", "3", "--root", str(tmp_path), *TINY_TC])
    assert "argument --seed: not allowed in a sweep (use --seeds)" in capsys.readouterr().err


def test_summary_rows():
    rows = [{"seed": s, "mig": m} for s, m in ((0, 0.1), (1, 0.4), (2, 0.3))]
    stats = sweep.summarise(rows)
    assert stats["mig"] == (0.3, 0.1, 0.4)
    assert "| **median** | 0.300 |" in sweep.markdown_table(rows)


class _Oracle:
    """A 'model' whose reconstruction is its input (or one fixed image): for shape_fidelity."""

    latent_dim, dtype = 1, np.float64

    def __init__(self, input_dim, blob=None):
        self.input_dim, self.blob = input_dim, blob

    def encode(self, x):
        return np.zeros((len(x), 1)), np.zeros((len(x), 1))

    def reconstruct(self, x):
        return x if self.blob is None else np.tile(self.blob, (len(x), 1))


def test_shape_fidelity_perfect_and_blob():
    ds = tv.datasets.DSprites(resolution=32)
    perfect = metrics.shape_fidelity(_Oracle(ds.input_dim), ds, n=300)
    assert perfect["shape_kept"] > 0.9 and perfect["iou"] == pytest.approx(1.0)
    assert set(perfect["per_shape"]) == {"square", "ellipse", "heart"}
    empty = metrics.shape_fidelity(_Oracle(ds.input_dim, np.zeros(ds.input_dim)), ds, n=300)
    assert empty["shape_kept"] == 0.0        # all IoUs 0: ties are misses


def test_factor_labels_name_each_factors_top_latent():
    from tinyvae import report

    rep = {"mutual_info": [[2.0, 0.0, 0.01], [0.1, 0.05, 0.02], [0.0, 0.3, 0.0]],
           "factor_entropy": [3.0, 1.0, 1.0], "factor_names": ["pos_x", "scale", "shape"]}
    assert report.factor_labels(rep) == {0: "pos_x", 2: "scale"}     # shape: 2% is no label
    rep["mutual_info"][2][0] = 2.5
    assert report.factor_labels(rep) == {2: "pos_x+scale"}
    assert report.factor_labels({}) == {}
