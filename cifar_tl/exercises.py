"""Exercises of the notebooks: a check that says "not answered yet", "wrong: <diagnosis>" or
"right", and a solution shown only when asked for.

A notebook's exercise is a prompt, a cell whose answer is still ``...``, and a check cell that is
one call, ``exercises.check("05.1", accuracy_by_lr, best_lr)``: the expected values and the
reference code live here (:mod:`cifar_tl.exercise_bank_basics`, ``_model``, ``_training``,
``_testing`` and ``_beyond``, by notebook), not in the notebook, so neither JupyterLab, Colab nor GitHub shows an
answer before the student asks for it with ``exercises.solution("05.1")``.

A check recomputes its truths from the notebook's state (the variables, the files written, the
``requires_grad`` flags, accuracies trained again) and names the typical mistake it recognises.
A solution is code text, printed, then run on a *copy* of the notebook's variables: it never
rebinds the student's names, and it prints or plots the lesson rather than "right".

With ``CIFAR_TL_EXERCISES=verify`` (set by notebooks/conftest.py for CI), every check also runs
the exercise's solution (it must be right) and its known wrong answers (each must be wrong with
its own diagnosis), and raises AssertionError otherwise; a student never sees this.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import math
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NOT_ANSWERED", "Exercise", "Verdict", "Wrong", "answered", "check", "has_chinese", "solution", "verdict",
           "verify"]

NOT_ANSWERED = ("not answered yet: replace the ... with your answer and run the cell again"
                " · 还没有作答：把 ... 换成你的答案，再运行这个单元格")
# The verdict's first word in both of the course's languages; the sentence after it is said in
# English, then in Chinese on the next line.
LABELS = {"right": "right · 正确", "wrong": "wrong · 错误"}
VERIFY_ENV = "CIFAR_TL_EXERCISES"
BANKS = {"00": "basics", "01": "basics", "02": "basics", "03": "model", "04": "model",
         "05": "training", "06": "testing", "07": "beyond", "08": "beyond", "09": "beyond"}


class Wrong(Exception):
    """Raised by an exercise's test with its diagnosis: what is wrong, and a hint (never the answer),
    in English and in Chinese: ``raise Wrong("divide the other way", "反过来除")``."""

    def __init__(self, message: str, zh: str = ""):
        super().__init__(message)
        self.zh = zh


def has_chinese(text: str) -> bool:
    """Whether ``text`` holds a CJK ideograph (the course's check that a sentence has its Chinese)."""
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _bilingual(said) -> tuple[str, str]:
    """(English, Chinese) of a test's sentence: a string (English only) or a pair."""
    if isinstance(said, tuple):
        return said[0], said[1]
    return (said or ""), ""


@dataclass
class Verdict:
    status: str  # "not answered", "wrong" or "right"
    message: str = ""
    zh: str = ""  # the message in Chinese

    def __str__(self) -> str:
        if self.status == "not answered":
            return NOT_ANSWERED
        text = f"{LABELS.get(self.status, self.status)}{': ' + self.message if self.message else ''}"
        return f"{text}\n    {self.zh}" if self.zh else text


@dataclass
class Exercise:
    """One exercise. ``test(ns, *answers)`` returns the sentence said with "right" or raises
    :class:`Wrong`; ``solution`` is notebook code that binds ``names`` and shows the lesson;
    ``wrongs`` are (notebook code binding ``names``, a fragment its diagnosis must contain[, the
    variables it needs, space-separated: it is skipped in a notebook without them])."""

    key: str
    names: tuple[str, ...]
    test: Callable[..., str]
    solution: str
    wrongs: list[tuple[str, str, str]] = field(default_factory=list)
    hint: tuple[str, str] = ("", "")  # (English, Chinese), said when the answer makes the check raise


EXERCISES: dict[str, Exercise] = {}


def register(key: str, names: str, solution: str, wrongs: list[tuple], hint: tuple[str, str] = ("", "")):
    """Decorator for an exercise's test: ``@register("00.1", "my_speedup", SOLUTION, WRONGS)``. The
    test returns what is said with "right" as an (English, Chinese) pair, or raises :class:`Wrong`."""

    def wrap(test):
        EXERCISES[key] = Exercise(key, tuple(names.split()), test, textwrap.dedent(solution).strip(),
                                  [(textwrap.dedent(w[0]).strip(), w[1], w[2] if len(w) > 2 else "") for w in wrongs], hint)
        return test

    return wrap


def exercise(key: str) -> Exercise:
    notebook = key.split(".")[0]
    if notebook in BANKS:
        importlib.import_module(f"cifar_tl.exercise_bank_{BANKS[notebook]}")
    if key not in EXERCISES:
        raise KeyError(f"no exercise {key!r}: the keys are like '05.1' (notebook 05, exercise 1)")
    return EXERCISES[key]


def answered(answer: Any) -> bool:
    """Whether ``answer`` holds no ``...``: neither is it ``...`` nor does a tuple, list or dict of it
    hold one (a function whose body is still ``...`` is caught by :func:`verdict`)."""
    if answer is Ellipsis:
        return False
    if isinstance(answer, (tuple, list)):
        return all(answered(a) for a in answer)
    if isinstance(answer, dict):
        return all(answered(a) for a in answer.keys()) and all(answered(a) for a in answer.values())
    return True


class _Blank(Exception):
    """A function answer returned ``...``: its body is not written yet."""


def _blank_aware(answer: Any) -> Any:
    """``answer`` with each function the student wrote raising _Blank where it returns ``...``."""
    if not inspect.isfunction(answer):
        return answer

    def wrapped(*args, **kwargs):
        result = answer(*args, **kwargs)
        if not answered(result):
            raise _Blank
        return result

    return wrapped


def verdict(key: str, *answers: Any, ns: dict) -> Verdict:
    """The check of exercise ``key`` on ``answers`` (in the order of its names), with the notebook's
    variables ``ns``; never raises for an unanswered or a wrong answer."""
    ex = exercise(key)
    if len(answers) != len(ex.names):
        names = ", ".join(ex.names)
        return Verdict("wrong", f"the check takes {len(ex.names)} answer(s): {names}",
                       f"这个检查需要 {len(ex.names)} 个答案：{names}")
    if not all(answered(a) for a in answers):
        return Verdict("not answered")
    try:
        said = ex.test(ns, *map(_blank_aware, answers))
    except _Blank:
        return Verdict("not answered")
    except Wrong as e:
        return Verdict("wrong", str(e), e.zh)
    except Exception as e:  # the student's answer may make anything raise: say so, go on
        error = f"({type(e).__name__}: {e})"
        hint, hint_zh = ex.hint
        return Verdict("wrong", f"{hint} {error}".strip(),
                       f"{hint_zh or '你的答案在检查时出错'} {error}")
    return Verdict("right", *_bilingual(said))


def _caller_globals(depth: int = 2) -> dict:
    frame = inspect.currentframe()
    for _ in range(depth):
        frame = frame.f_back
    return frame.f_globals


def check(key: str, *answers: Any, ns: dict | None = None) -> None:
    """Print the verdict on a student's answers to exercise ``key``; ``ns``: the notebook's
    variables (default: the calling cell's globals). Returns None, so a cell shows no ``Out:``."""
    ns = _caller_globals() if ns is None else ns
    print(verdict(key, *answers, ns=ns))
    if os.environ.get(VERIFY_ENV) == "verify":
        verify(key, ns)


def run_code(code: str, ns: dict) -> dict:
    """Run notebook code on a shallow copy of ``ns`` (rebinding there never reaches ``ns``)."""
    copy = dict(ns)
    exec(compile(code, "<exercise>", "exec"), copy)  # noqa: S102 - the library's own code text
    return copy


def _answers_of(ex: Exercise, state: dict) -> tuple:
    return tuple(state[name] for name in ex.names)


def solution(key: str, ns: dict | None = None, show_code: bool = True) -> None:
    """Print a solution of exercise ``key`` and run it on a copy of the notebook's variables: it
    prints or plots the lesson; your own variables are left as they are."""
    ns = _caller_globals() if ns is None else ns
    ex = exercise(key)
    if show_code:
        print(f"# A solution of {key} · 参考答案 (run on a copy of your variables: yours are unchanged)")
        print(ex.solution)
        print("# ---- what it shows · 输出")
    run_code(ex.solution, ns)


def verify(key: str, ns: dict) -> None:
    """Raise AssertionError unless the solution is right and every known wrong answer is wrong with
    its own diagnosis, all on copies of ``ns`` (for CI and the tests)."""
    ex = exercise(key)
    with _quiet():
        state = run_code(ex.solution, ns)
        said = verdict(key, *_answers_of(ex, state), ns=state)
    assert said.status == "right", f"{key}: the solution is not right: {said}"
    assert has_chinese(said.zh), f"{key}: what is said with right has no Chinese: {said}"
    right = _answers_of(ex, state)
    for code, why, needs in ex.wrongs:
        if not all(name in ns for name in needs.split()):
            continue
        with _quiet():
            state = run_code(code, ns)
            assert not _same(_answers_of(ex, state), right), \
                f"{key}: the wrong answer {code!r} gives the solution's values on this data: the check would call it right"
            said = verdict(key, *_answers_of(ex, state), ns=state)
        assert said.status == "wrong" and why in said.message, \
            f"{key}: the wrong answer {code!r} should be wrong with {why!r}, got {said}"
        assert has_chinese(said.zh), f"{key}: the diagnosis of {code!r} has no Chinese: {said}"


def _same(a, b) -> bool:
    """Whether two answers hold the same values (tensors compared by value, shape included)."""
    try:
        import torch

        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
                and torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-9, equal_nan=True)
        if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
            return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        return type(a) is type(b) and bool(a == b)
    except Exception:  # answers that cannot be compared (models, figures): never the same
        return False


@contextlib.contextmanager
def _quiet():
    """Nothing printed and no figure left over (verification runs the solutions a second time)."""
    plt = sys.modules.get("matplotlib.pyplot")
    before = set(plt.get_fignums()) if plt else set()
    with contextlib.redirect_stdout(io.StringIO()):
        yield
    plt = sys.modules.get("matplotlib.pyplot")
    for num in set(plt.get_fignums()) - before if plt else ():
        plt.close(num)
