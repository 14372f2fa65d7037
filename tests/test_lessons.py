"""The lesson notebooks: in sync with their sources, clean, runnable, and their student versions.

Every lesson is executed in smoke mode (TINYVAE_SMOKE=1: tiny data, few steps) in a real
python3 kernel with the lessons folder as working directory. The student version of each
lesson must fail with NotImplementedError at the first exercise check, the solved version
must pass.
"""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from tinyvae import lessons
from tinyvae.cli import main

NAMES = lessons.LESSON_NAMES


def _read(name):
    return nbformat.read(lessons.notebook_path(name), as_version=4)


def _first_solution_and_check(nb):
    """Indices of the first cell holding a solution block and of the first cell after it
    that runs it (the check)."""
    first = next(i for i, c in enumerate(nb.cells)
                 if c.cell_type == "code" and lessons.has_solution(c.source))
    check = next(i for i, c in enumerate(nb.cells)
                 if i > first and c.cell_type == "code" and "Check for" in c.source)
    return first, check


# ---------------------------------------------------------------------------
# the source format and the student transformation (fast, no kernel)
# ---------------------------------------------------------------------------


SOURCE = """# %% [markdown]
# Title

Some $x$ maths.

# %% tags=["parameters"]
SMOKE = False

# %%
def f(x):
    y = 2 * x
    # BEGIN SOLUTION
    # HINT: return 3 x
    return 3 * x
    # END SOLUTION

# %%
# Check for f
print(f(1.0))
"""


def test_parse_source_cells_types_and_tags():
    cells = lessons.parse_source(SOURCE)
    assert [c["cell_type"] for c in cells] == ["markdown", "code", "code", "code"]
    assert cells[0]["source"] == "# Title\n\nSome $x$ maths."
    assert cells[1]["tags"] == ["parameters"]
    assert cells[2]["source"].startswith("def f(x):") and cells[2]["source"].endswith("# END SOLUTION")


def test_parse_source_rejects_content_before_a_marker_and_bad_markers():
    with pytest.raises(ValueError, match="marker"):
        lessons.parse_source("x = 1\n# %%\n")
    with pytest.raises(ValueError, match="expected"):
        lessons.parse_source("# %% [raw]\n")


def test_student_source_replaces_solution_with_hinted_error():
    src = lessons.parse_source(SOURCE)[2]["source"]
    out = lessons.student_source(src)
    assert "return 3 * x" not in out
    assert "BEGIN SOLUTION" not in out and "END SOLUTION" not in out
    assert "    # TODO: return 3 x" in out
    assert "    raise NotImplementedError('return 3 x')" in out
    assert "y = 2 * x" in out                      # code outside the block stays
    compile(out, "<student>", "exec")               # and the cell is still valid Python


def test_student_source_default_hint_and_unbalanced_markers():
    out = lessons.student_source("# BEGIN SOLUTION\nz = 1\n# END SOLUTION")
    assert lessons.DEFAULT_HINT in out and "z = 1" not in out
    with pytest.raises(ValueError, match="without"):
        lessons.student_source("# BEGIN SOLUTION\nz = 1\n")
    with pytest.raises(ValueError, match="without"):
        lessons.student_source("z = 1\n# END SOLUTION\n")


def test_student_notebook_keeps_checks_and_clears_outputs():
    nb = lessons.build_notebook(SOURCE)
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="3.0\n")]
    nb.cells[3].execution_count = 7
    student = lessons.student_notebook(nb)
    assert student.cells[3].source == nb.cells[3].source          # the check cell stays
    assert all(c.get("outputs", []) == [] for c in student.cells)
    assert all(c.get("execution_count") is None for c in student.cells if c.cell_type == "code")
    assert "NotImplementedError" in student.cells[2].source
    assert nb.cells[3].outputs                                    # the original is untouched


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_its_source(name):
    """The .ipynb is built from lessons/src/<name>.pct: same cells, same sources."""
    built = lessons.build_notebook(lessons.source_path(name).read_text(encoding="utf-8"))
    committed = _read(name)
    assert [c.cell_type for c in committed.cells] == [c.cell_type for c in built.cells]
    for got, want in zip(committed.cells, built.cells, strict=True):
        assert got.source == want.source


@pytest.mark.parametrize("name", NAMES)
def test_lesson_structure(name):
    nb = _read(name)
    assert nb.cells[0].cell_type == "markdown" and "What you will learn" in nb.cells[0].source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "TINYVAE_SMOKE" in params[0].source
    assert "Exercises to go further" in "\n".join(c.source for c in nb.cells[-3:])
    solutions = [c for c in nb.cells if c.cell_type == "code" and lessons.has_solution(c.source)]
    assert solutions, "each lesson has at least one exercise"
    first, check = _first_solution_and_check(nb)
    assert "rel_error" in nb.cells[check].source and "expect" in nb.cells[check].source


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_outputs_no_errors_and_is_small(name):
    path = lessons.notebook_path(name)
    nb = _read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "run `tinyvae lessons --run`"
    for cell in code:
        for out in cell.outputs:
            assert out.output_type != "error", cell.source[:80]
            if out.output_type == "stream":
                assert out.name == "stdout", f"stderr output (a warning?) in: {cell.source[:80]}"
    assert any("image/png" in out.get("data", {}) for c in code for out in c.outputs)
    assert path.stat().st_size < 1_500_000


# ---------------------------------------------------------------------------
# execution (smoke mode, real kernels)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_lesson_runs_in_smoke_mode(name):
    nb, seconds = lessons.execute(_read(name), smoke=True, timeout=300)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(out.output_type != "error" for c in code for out in c.outputs)
    assert seconds < 120


@pytest.mark.parametrize("name", NAMES)
def test_student_version_fails_at_first_exercise_check(name):
    nb = _read(name)
    first, check = _first_solution_and_check(nb)
    student = lessons.student_notebook(nb)
    # execute only up to (and including) the first check: that is where a student is stopped
    student.cells = student.cells[:check + 1]
    with pytest.raises(CellExecutionError) as info:
        lessons.execute(student, smoke=True, timeout=300)
    assert "NotImplementedError" in str(info.value)
    assert student.cells[check].outputs[-1].output_type == "error"
    assert all(out.output_type != "error" for c in student.cells[:check] for out in c.get("outputs", []))


def test_write_student_versions_and_cli(tmp_path, capsys):
    assert main(["lessons", "--list"]) == 0
    assert "02_vae" in capsys.readouterr().out
    assert main(["lessons", "--student", str(tmp_path), "00"]) == 0
    student = nbformat.read(tmp_path / "00_backprop_by_hand.ipynb", as_version=4)
    sources = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert "BEGIN SOLUTION" not in sources and "raise NotImplementedError" in sources
    assert "Check for Exercise 1" in sources
    assert json.dumps([c.get("outputs", []) for c in student.cells]).count("output_type") == 0


def test_unknown_lesson_name_is_a_clear_error():
    with pytest.raises(ValueError, match="expected one of"):
        lessons.write_student_versions("unused", ["99"])


def test_first_hints_and_replace_solutions():
    cell = "def f(x):\n    # BEGIN SOLUTION\n    # HINT: think\n    return 3 * x\n    # END SOLUTION\n" \
           "# BEGIN SOLUTION\ny = 2\n# END SOLUTION"
    assert lessons.first_hints(cell) == ["think", lessons.DEFAULT_HINT]
    out = lessons.replace_solutions(cell, lambda k, block, ind: [f"{ind}# block {k}: {len(block)} lines"])
    assert out == "def f(x):\n    # block 0: 2 lines\n# block 1: 1 lines"
