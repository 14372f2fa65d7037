"""Every graded exercise rejects the usual wrong answers, with a message that names the part.

A wrong answer is an edit of an exercise's solution block: exactly what a student who made that mistake
would have written. The lesson's code cells run in-process, in smoke mode, in order; at each exercise
cell every listed wrong answer replaces the solution, and that cell and its check cell run in a copy of
the namespace: the check must raise AssertionError with a message matching the listed pattern. Then the
real solution runs (and must pass its check) and the lesson goes on.

The wrong answers of the issue that asked for this: the Bernoulli loss without the 1/n, the KL without
the 1/2, the beta-VAE loss without beta, a mean instead of a sum over pixels, and log(1 + exp(l)) that
overflows at +-1000; plus the classic slips of each backward pass (lesson 4: the total correlation's).
"""

from __future__ import annotations

import re
import warnings

import matplotlib
import nbformat
import pytest

from tinyvae import lessons

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)

STABLE_SOFTPLUS = "softplus = np.maximum(logits, 0) + np.log1p(np.exp(-np.abs(logits)))"
OVERFLOWING_SOFTPLUS = "softplus = np.log(1 + np.exp(logits))"

# lesson -> {text that identifies the exercise cell: [(mistake, [(old, new) edits], message pattern)]}
WRONG_ANSWERS = {
    "00_backprop_by_hand": {
        "def linear_backward": [
            ("db as a mean over the batch", [("db = dout.sum(axis=0)", "db = dout.mean(axis=0)")],
             r"^db: .*0\.25 times the reference.*1/n"),
            ("dW divided by n", [("dW = x.T @ dout", "dW = x.T @ dout / len(x)")],
             r"^dW: .*0\.25 times the reference.*1/n"),
            ("dx through a wrong matrix of the right shape",
             [("dx = dout @ W.T", "dx = dout @ W[:3].T @ W[:3] @ W.T")], r"^dx: rel_error"),
        ],
        "def sigmoid_forward": [
            ("sigmoid' = y", [("return dout * y * (1.0 - y)", "return dout * y")], r"^sigmoid da: rel_error"),
            ("tanh' = 1 - y", [("return dout * (1.0 - y * y)", "return dout * (1.0 - y)")],
             r"^tanh da: rel_error"),
        ],
    },
    "01_autoencoder": {
        "def bernoulli_nll": [
            ("Bernoulli loss without 1/n",
             [("loss = float((softplus - x * logits).sum() / n)",
               "loss = float((softplus - x * logits).sum())"),
              ("dlogits = (sigmoid - x) / n", "dlogits = sigmoid - x")],
             r"^loss vs the textbook formula: .*4 times the reference.*divide by n"),
            ("mean instead of sum over pixels",
             [("loss = float((softplus - x * logits).sum() / n)",
               "loss = float((softplus - x * logits).mean(axis=1).mean())"),
              ("dlogits = (sigmoid - x) / n", "dlogits = (sigmoid - x) / logits.size")],
             r"^loss vs the textbook formula: .*0\.1429 times the reference.*do not average"),
            ("log(1 + exp(l)) that overflows", [(STABLE_SOFTPLUS, OVERFLOWING_SOFTPLUS)],
             r"^loss at logits \+-1000: expected finite numbers"),
            ("the gradient without 1/n", [("dlogits = (sigmoid - x) / n", "dlogits = sigmoid - x")],
             r"^dlogits vs tv.losses.bernoulli_nll: .*4 times the reference.*divide by n"),
        ],
    },
    "02_vae": {
        "def reparameterize_forward": [
            ("dlogvar without the 1/2", [("dlogvar = dz * 0.5 * sigma * eps", "dlogvar = dz * sigma * eps")],
             r"^dlogvar: .*2 times the reference.*factor 1/2"),
            ("dlogvar without sigma", [("dlogvar = dz * 0.5 * sigma * eps", "dlogvar = dz * 0.5 * eps")],
             r"^dlogvar: rel_error"),
        ],
        "def gaussian_kl(mu, logvar)": [
            ("KL without the 1/2, with its own consistent gradient",
             [("return 0.5 * (mu * mu + np.exp(logvar) - 1 - logvar)",
               "return mu * mu + np.exp(logvar) - 1 - logvar"),
              ("return dkl * mu, dkl * 0.5 * (np.exp(logvar) - 1)",
               "return 2 * dkl * mu, dkl * (np.exp(logvar) - 1)")],
             r"^KL vs quadrature: .*2 times the reference.*lost 1/2"),
            ("KL gradient without the 1/2",
             [("return dkl * mu, dkl * 0.5 * (np.exp(logvar) - 1)",
               "return dkl * mu, dkl * (np.exp(logvar) - 1)")],
             r"^dlogvar: .*2 times the reference.*lost 1/2"),
        ],
        "def vae_backward": [
            ("dmu without the KL's part", [('g["mu"] = g["z"] + dmu_kl', 'g["mu"] = g["z"]')],
             r"^dmu: rel_error"),
            ("dlogvar without the KL's part",
             [('g["logvar"] = g["sigma"] * 0.5 * v["sigma"] + dlogvar_kl',
               'g["logvar"] = g["sigma"] * 0.5 * v["sigma"]')],
             r"^dlogvar: rel_error"),
            ("dh from the mu head only", [('g["h"] = dh_mu + dh_lv', 'g["h"] = dh_mu')], r"^dh: rel_error"),
            ("KL without the 1/2 in the backward",
             [('np.full_like(v["mu"], BETA / n)', 'np.full_like(v["mu"], 2 * BETA / n)')],
             r"^dlogvar: rel_error"),
            ("dsigma with sigma for eps",
             [('g["sigma"] = g["z"] * v["eps"]', 'g["sigma"] = g["z"] * v["sigma"]')],
             r"^dsigma: rel_error"),
        ],
    },
    "03_beta_vae": {
        "def beta_vae_loss": [
            ("Bernoulli loss without 1/n",
             [("recon = (softplus - x * logits).sum() / n", "recon = (softplus - x * logits).sum()")],
             r"^reconstruction part of the loss: .*5 times the reference.*divide by n"),
            ("KL without the 1/2",
             [("kl = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).sum() / n",
               "kl = (mu**2 + np.exp(logvar) - 1 - logvar).sum() / n")],
             r"^KL part of the loss .*2 times the reference.*factor 1/2"),
            ("beta-VAE loss without beta", [("loss = recon + beta * kl", "loss = recon + kl"),
                                            ("dmu = beta * mu / n", "dmu = mu / n"),
                                            ("dlogvar = beta * 0.5 *", "dlogvar = 0.5 *")],
             r"^KL part of the loss .*0\.3333 times the reference.*beta = 3 is missing"),
            ("gradients without beta", [("dmu = beta * mu / n", "dmu = mu / n")],
             r"^dmu: .*0\.3333 times the reference.*beta = 3 is missing"),
            ("mean instead of sum over pixels",
             [("recon = (softplus - x * logits).sum() / n",
               "recon = (softplus - x * logits).mean(axis=1).mean()")],
             r"^reconstruction part of the loss: .*0\.1 times the reference.*do not average"),
            ("log(1 + exp(l)) that overflows", [(STABLE_SOFTPLUS, OVERFLOWING_SOFTPLUS)],
             r"^loss at logits \+-1000: expected finite numbers"),
        ],
    },
    "04_dismantling_disentanglement": {
        "def tc_backward": [
            ("the batch mean's 1/B left out",
             [("dL = dtc / B * (", "dL = dtc * (")],
             r"^dz vs tv.losses.tc_terms_backward: .*6 times the reference.*divide by B"),
            ("signs of the joint and marginal terms swapped",
             [("(joint_softmax[:, :, None] - marginal_softmax)",
               "(marginal_softmax - joint_softmax[:, :, None])")],
             r"^dz vs tv.losses.tc_terms_backward: .*-1 times the reference.*signs are swapped"),
            ("softmax over the wrong axis",
             [("np.exp(a - logsumexp(a, axis=1)[:, None])", "np.exp(a - logsumexp(a, axis=0)[None, :])")],
             r"^dz vs tv.losses.tc_terms_backward: rel_error"),
            ("the log weights left out of the softmax",
             [("a = log_w + L.sum(axis=2)", "a = L.sum(axis=2)"), ("b = log_w[:, :, None] + L", "b = L")],
             r"^dz vs tv.losses.tc_terms_backward: rel_error"),
            ("the marginal term forgotten",
             [("(joint_softmax[:, :, None] - marginal_softmax)", "joint_softmax[:, :, None]")],
             r"^dz vs tv.losses.tc_terms_backward: rel_error"),
        ],
    },
}


def _runnable(source):
    """A code cell as plain Python: IPython magics (%matplotlib) dropped."""
    return "\n".join(line for line in source.split("\n") if not line.lstrip().startswith("%"))


def _run(source, namespace):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # Agg's "cannot show", overflow of the wrong answers
        exec(compile(_runnable(source), "<lesson cell>", "exec"), namespace)
    plt.close("all")


def _wrong(source, edits):
    for old, new in edits:
        assert source.count(old) == 1, f"wrong answer edit does not apply: {old!r}"
        source = source.replace(old, new)
    return source


def _check_cell(cells, i):
    return next(j for j in range(i + 1, len(cells))
                if cells[j].cell_type == "code" and "Check for" in cells[j].source)


@pytest.mark.parametrize("name", list(WRONG_ANSWERS))
def test_every_listed_wrong_answer_fails_its_check_with_a_message(name, monkeypatch):
    monkeypatch.setenv(lessons.SMOKE_ENV, "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    cells = nbformat.read(lessons.notebook_path(name), as_version=4).cells
    exercises = {}
    for key, mistakes in WRONG_ANSWERS[name].items():
        found = [i for i, c in enumerate(cells) if c.cell_type == "code" and key in c.source
                 and lessons.has_solution(c.source)]
        assert len(found) == 1, f"{name}: no single exercise cell holds {key!r}"
        exercises[found[0]] = mistakes
    graded = [i for i, c in enumerate(cells) if c.cell_type == "code" and lessons.has_solution(c.source)]
    assert sorted(exercises) == graded, f"{name}: every exercise has its wrong answers listed here"

    namespace, last = {"__name__": "__lesson__"}, _check_cell(cells, max(exercises))
    for i, cell in enumerate(cells[:last + 1]):
        if cell.cell_type != "code":
            continue
        if i in exercises:
            check = cells[_check_cell(cells, i)].source
            for mistake, edits, pattern in exercises[i]:
                trial = dict(namespace)
                _run(_wrong(cell.source, edits), trial)
                with pytest.raises(AssertionError) as info:
                    _run(check, trial)
                assert re.search(pattern, str(info.value)), f"{name}, {mistake}: message {info.value}"
        _run(cell.source, namespace)           # the real solution (and every check) must pass


@pytest.mark.parametrize("name", lessons.LESSON_NAMES)
def test_exercises_give_the_idea_first_and_the_formula_last(name):
    cells = nbformat.read(lessons.notebook_path(name), as_version=4).cells
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or not lessons.has_solution(cell.source):
            continue
        hints = lessons.first_hints(cell.source)
        assert hints and all(h != lessons.DEFAULT_HINT for h in hints), cell.source[:60]
        for hint in hints:                     # the first rung is an idea: no equation in it
            assert "=" not in hint, f"{name}: first hint gives a formula: {hint!r}"
        ladder = cells[i + 1]
        assert ladder.cell_type == "markdown" and ladder.source.count("<details>") >= 3, cell.source[:60]
        summaries = re.findall(r"<summary>(.*?)</summary>", ladder.source)
        assert "idea" in summaries[0] and "formula" in summaries[-1], summaries
