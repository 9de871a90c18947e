"""Where a notebook runs: a person at a live Jupyter kernel, a batch runner (nbval, papermill,
nbconvert), or Google Colab; and the small display helpers the widgets share.

``CIFAR_TL_WIDGETS=static`` (or ``interactive``) forces the choice; ``notebooks/conftest.py`` sets
``static`` for nbval.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BATCH_RUNNERS = ("pytest", "papermill", "nbconvert", "nbclient", "nbval")


def _parent_command() -> list[str]:
    """The command line of the process that started this kernel ([] where it cannot be read)."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:  # not Linux: rely on CIFAR_TL_WIDGETS
        return []
    return raw.decode(errors="replace").split("\0")


def _batch_runner(argv: list[str]) -> bool:
    """Whether a command line runs a batch runner: ``pytest``, ``python -m papermill``, ``jupyter-nbconvert``...

    Only the program (or the module after ``-m``) counts, never its arguments.
    """
    if not argv:
        return False
    prog = argv[0]
    if Path(prog).name.lower().startswith("python") and len(argv) > 1:
        prog = argv[2] if argv[1] == "-m" and len(argv) > 2 else argv[1]
    return Path(prog).name.lower().removeprefix("jupyter-").startswith(BATCH_RUNNERS)


def is_interactive() -> bool:
    """True when a widget can be shown to a person: a live Jupyter kernel, ipywidgets, no batch runner."""
    mode = os.environ.get("CIFAR_TL_WIDGETS", "auto").strip().lower()
    if mode in ("0", "off", "false", "static", "no"):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":  # terminal IPython, scripts
        return False
    if mode in ("1", "on", "true", "interactive", "yes"):
        return True
    return not _batch_runner(_parent_command())


def _decide(interactive: bool | None) -> bool:
    return is_interactive() if interactive is None else bool(interactive)


def _figure(figsize):
    """A Figure outside pyplot: displayed once when returned, never again by the inline backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


SAVED_NOTE = ("*Interactive controls below. Reopened from a saved notebook they read \"Error displaying widget: "
              "model not found\" until you run this cell again.* · *下方是交互控件。重新打开保存过的笔记本时，"
              "它们会显示 \"Error displaying widget: model not found\"，再运行一次这个单元格即可恢复。*")


def _saved_note() -> None:
    """One line of text above a widget: a saved notebook keeps it, where the widget itself shows
    "Error displaying widget" until the cell is run again."""
    from IPython import get_ipython
    from IPython.display import Markdown, display

    if get_ipython() is not None:  # in a plain Python session there is nothing to save
        display(Markdown(SAVED_NOTE))


def in_colab() -> bool:
    """Whether this kernel is Google Colab's (its module is imported there, and only there)."""
    return "google.colab" in sys.modules


def _show_in(out, fig) -> None:
    from IPython.display import clear_output, display

    with out:
        clear_output(wait=True)
        display(fig)
