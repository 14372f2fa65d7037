"""The lesson notebooks: build them from their sources, run them, make student versions.

Each lesson is written as a plain-text *percent source* in ``lessons/src/<name>.pct``
and built into ``lessons/<name>.ipynb``. A source is a sequence of cells, each opened
by a marker line::

    # %% [markdown]          a markdown cell; the lines below it are Markdown, verbatim
    # %%                     a code cell
    # %% tags=["parameters"] a code cell with cell tags (JSON list)

Exercises are code whose solution sits between ``# BEGIN SOLUTION`` and
``# END SOLUTION`` lines (an optional ``# HINT: ...`` line inside the block says
what to do). :func:`student_notebook` turns every such block into
``raise NotImplementedError(<hint>)``; the check cells that follow stay.

Command line (``tinyvae lessons``)::

    tinyvae lessons --list                 the lessons and their sources
    tinyvae lessons --build [NAMES]        sources -> notebooks (outputs cleared if code changed)
    tinyvae lessons --run [--smoke] [NAMES]  execute notebooks in place, with outputs
    tinyvae lessons --student OUT [NAMES]  write student versions into OUT

``tinyvae lessons --build --run`` regenerates the committed notebooks. Importing this
module is cheap: nbformat and nbclient are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

#: the lessons, in order
LESSON_NAMES = ("00_backprop_by_hand", "01_autoencoder", "02_vae", "03_beta_vae",
                "04_dismantling_disentanglement")

BEGIN_SOLUTION = "# BEGIN SOLUTION"
END_SOLUTION = "# END SOLUTION"
HINT_PREFIX = "# HINT:"
DEFAULT_HINT = "implement this step, then run the check cell below"
#: environment variable the lessons' first (parameters) cell reads
SMOKE_ENV = "TINYVAE_SMOKE"

_MARKER = re.compile(r"^# %%(?P<rest>.*)$")
_BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION[ \t]*$")
_END = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")


def lessons_dir() -> Path:
    """The ``lessons/`` folder of this checkout (tinyvae is installed editable)."""
    path = Path(__file__).resolve().parent.parent / "lessons"
    if not path.is_dir():
        raise FileNotFoundError(
            f"lessons folder not found at {path}: the lessons ship with the repository, "
            "not with the installed package (clone the repository and pip install -e .)"
        )
    return path


def _resolve_names(names):
    if not names:
        return list(LESSON_NAMES)
    chosen = []
    for name in names:
        stem = Path(name).stem
        matches = [lesson for lesson in LESSON_NAMES if lesson == stem or lesson.startswith(stem)]
        if len(matches) != 1:
            raise ValueError(f"lesson: expected one of {LESSON_NAMES} (or a unique prefix such as "
                             f"'02'), got {name!r}")
        chosen.append(matches[0])
    return chosen


# ---------------------------------------------------------------------------
# sources -> notebooks
# ---------------------------------------------------------------------------


def parse_source(text: str) -> list[dict]:
    """Split a percent source into cells.

    Returns a list of {"cell_type": "markdown" | "code", "source": str, "tags": list}.
    Blank lines at the start and end of each cell are dropped.
    """
    cells = []
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _MARKER.match(line)
        if match is None:
            if current is None:
                if line.strip():
                    raise ValueError(f"line {number}: expected a '# %%' cell marker before "
                                     f"any content, got {line!r}")
                continue
            current["lines"].append(line)
            continue
        rest = match.group("rest").strip()
        cell_type, tags = "code", []
        if rest.startswith("[markdown]"):
            cell_type, rest = "markdown", rest[len("[markdown]"):].strip()
        if rest.startswith("tags="):
            try:
                tags = json.loads(rest[len("tags="):])
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number}: tags must be a JSON list, got {rest!r}") from err
        elif rest:
            raise ValueError(f"line {number}: expected '# %%', '# %% [markdown]' or "
                             f"'# %% tags=[...]', got {line!r}")
        current = {"cell_type": cell_type, "lines": [], "tags": list(tags)}
        cells.append(current)
    out = []
    for cell in cells:
        lines = cell.pop("lines")
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        out.append({**cell, "source": "\n".join(lines)})
    return out


def build_notebook(source_text: str):
    """A percent source (text) -> an nbformat v4 notebook without outputs."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for cell in parse_source(source_text):
        if cell["cell_type"] == "markdown":
            new = nbformat.v4.new_markdown_cell(cell["source"])
        else:
            new = nbformat.v4.new_code_cell(cell["source"])
        if cell["tags"]:
            new.metadata["tags"] = cell["tags"]
        nb.cells.append(new)
    _number_cells(nb)
    return nb


def _number_cells(nb):
    # Stable cell ids keep rebuilt notebooks diff-friendly.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"


def source_path(name: str) -> Path:
    return lessons_dir() / "src" / f"{name}.pct"


def notebook_path(name: str) -> Path:
    return lessons_dir() / f"{name}.ipynb"


def _write_notebook(nb, path: Path) -> None:
    import nbformat

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.replace(tmp, path)


def _code_sources(nb):
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def build(names=None) -> list[Path]:
    """Build ``lessons/<name>.ipynb`` from ``lessons/src/<name>.pct``.

    Outputs are cleared, except when only Markdown changed: if every code cell of the
    existing notebook is identical (same cells, same order), its outputs are kept, so
    fixing prose does not force a rerun.
    """
    import nbformat

    written = []
    for name in _resolve_names(names):
        nb = build_notebook(source_path(name).read_text(encoding="utf-8"))
        path = notebook_path(name)
        if path.exists():
            old = nbformat.read(path, as_version=4)
            if _code_sources(old) == _code_sources(nb):
                executed = iter(cell for cell in old.cells if cell.cell_type == "code")
                for cell in nb.cells:
                    if cell.cell_type == "code":
                        previous = next(executed)
                        cell.outputs = previous.outputs
                        cell.execution_count = previous.execution_count
        _write_notebook(nb, path)
        written.append(path)
    return written


# ---------------------------------------------------------------------------
# student versions
# ---------------------------------------------------------------------------


def replace_solutions(source: str, fill) -> str:
    """Replace every solution block of one code cell by ``fill(k, block_lines, indent)``.

    fill gets the block's number k (0, 1, ... within the cell), its lines (markers
    excluded) and the indentation of its BEGIN marker, and returns the lines to put in
    its place. Raises ValueError for a BEGIN without an END (or the reverse).
    """
    out, block, indent, k = [], None, "", 0
    for line in source.split("\n"):
        begin = _BEGIN.match(line)
        if begin is not None:
            if block is not None:
                raise ValueError(f"nested {BEGIN_SOLUTION} in:\n{source}")
            block, indent = [], begin.group("indent")
            continue
        if _END.match(line):
            if block is None:
                raise ValueError(f"{END_SOLUTION} without {BEGIN_SOLUTION} in:\n{source}")
            out.extend(fill(k, block, indent))
            block, k = None, k + 1
            continue
        if block is not None:
            block.append(line)
        else:
            out.append(line)
    if block is not None:
        raise ValueError(f"{BEGIN_SOLUTION} without {END_SOLUTION} in:\n{source}")
    return "\n".join(out)


def _hint_of(block):
    hints = [b.strip()[len(HINT_PREFIX):].strip() for b in block if b.strip().startswith(HINT_PREFIX)]
    return " ".join(hints) or DEFAULT_HINT


def student_source(source: str) -> str:
    """Replace every solution block of one code cell with ``raise NotImplementedError``.

    The block's ``# HINT:`` lines (the first rung of the hint ladder: the idea, never
    the formula) become a comment and the error message.
    Raises ValueError for a BEGIN without an END (or the reverse).
    """
    def unsolved(_k, block, indent):
        hint = _hint_of(block)
        return [f"{indent}# TODO: {hint}", f"{indent}raise NotImplementedError({hint!r})"]

    return replace_solutions(source, unsolved)


def first_hints(source: str) -> list[str]:
    """The first hint of each solution block of a code cell, in order."""
    hints = []
    replace_solutions(source, lambda _k, block, _indent: hints.append(_hint_of(block)) or [])
    return hints


def has_solution(source: str) -> bool:
    return any(_BEGIN.match(line) for line in source.split("\n"))


def student_notebook(nb):
    """A copy of ``nb`` with solutions removed and all outputs cleared."""
    import copy

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if has_solution(cell.source):
            cell.source = student_source(cell.source)
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


def write_student_versions(out_dir, names=None) -> list[Path]:
    """Write student versions of the lessons into ``out_dir`` (created if needed)."""
    import nbformat

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in _resolve_names(names):
        nb = nbformat.read(notebook_path(name), as_version=4)
        path = out_dir / f"{name}.ipynb"
        _write_notebook(student_notebook(nb), path)
        written.append(path)
    return written


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(**values):
    """Set environment variables (inherited by the kernel) and restore them afterwards."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update({key: str(value) for key, value in values.items()})
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute(nb, smoke=False, cwd=None, timeout=900):
    """Execute a notebook object in a fresh python3 kernel; returns (nb, seconds).

    smoke=True sets TINYVAE_SMOKE=1 for the kernel, which the lessons read to shrink
    data and training. Raises nbclient's CellExecutionError at the first failing cell.
    """
    from nbclient import NotebookClient

    cwd = str(cwd or lessons_dir())
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": cwd}}, record_timing=False)
    start = time.perf_counter()
    with _environment(**{SMOKE_ENV: "1" if smoke else "0"}):
        client.execute()
    return nb, time.perf_counter() - start


def run(names=None, smoke=False, write=True, timeout=900) -> dict:
    """Execute lessons; write them back in place with outputs (unless write=False).

    Returns {name: wall time in seconds}.
    """
    import nbformat

    times = {}
    for name in _resolve_names(names):
        path = notebook_path(name)
        nb = nbformat.read(path, as_version=4)
        nb, seconds = execute(nb, smoke=smoke, timeout=timeout)
        times[name] = seconds
        if write:
            _write_notebook(nb, path)
    return times


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def _command(args) -> int:
    if args.list:
        for name in LESSON_NAMES:
            print(f"{name:24s} {notebook_path(name)}")
        return 0
    if not (args.build or args.run or args.student):
        print("tinyvae lessons: nothing to do; pass --list, --build, --run or --student OUT")
        return 2
    if args.build:
        for path in build(args.names):
            print(f"built {path}")
    if args.run:
        for name in _resolve_names(args.names):
            mode = "smoke" if args.smoke else "full"
            seconds = run([name], smoke=args.smoke, write=not args.smoke or args.write)[name]
            print(f"ran {name} ({mode} mode) in {seconds:.1f} s", flush=True)
    if args.student:
        for path in write_student_versions(args.student, args.names):
            print(f"wrote student version {path}")
    return 0


def add_subparser(subparsers) -> None:
    """Add the ``lessons`` subcommand to tinyvae's command line."""
    p = subparsers.add_parser(
        "lessons", help="build, run, or write student versions of the lesson notebooks",
        description="Build, execute, or make student versions of the lesson notebooks. "
                    "`tinyvae lessons --build --run` regenerates the committed notebooks.")
    p.add_argument("names", nargs="*", help=f"lessons to act on (default all): {', '.join(LESSON_NAMES)}"
                   " or a prefix such as 02")
    p.add_argument("--list", action="store_true", help="list the lessons")
    p.add_argument("--build", action="store_true",
                   help="rebuild notebooks from lessons/src/*.pct (clears outputs unless only "
                        "Markdown changed)")
    p.add_argument("--run", action="store_true", help="execute notebooks and save their outputs")
    p.add_argument("--smoke", action="store_true",
                   help=f"with --run: set {SMOKE_ENV}=1 (tiny data, few steps); outputs are "
                        "not saved unless --write")
    p.add_argument("--write", action="store_true", help="with --run --smoke: save outputs anyway")
    p.add_argument("--student", metavar="OUT",
                   help="write student versions (solutions -> NotImplementedError) into OUT")
    p.set_defaults(func=_command)


__all__ = [
    "LESSON_NAMES", "lessons_dir", "parse_source", "build_notebook", "build",
    "replace_solutions", "student_source", "first_hints",
    "student_notebook", "write_student_versions", "execute", "run",
    "add_subparser",
]
