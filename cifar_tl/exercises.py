"""Exercise checks for the notebooks: "not answered yet", "wrong: why", or "right".

An exercise cell leaves its answer as ``...``; the check cell below it calls :func:`check`, which
never raises for an unanswered or a wrong answer, so "Run all" and ``pytest --nbval`` go on. The
collapsed solution cell ends with ``assert check(...)``, so CI proves every solution right.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["NOT_ANSWERED", "answered", "check"]

NOT_ANSWERED = "not answered yet: replace the ... with your answer and run the cell again"


def answered(answer: Any) -> bool:
    """Whether ``answer`` holds no ``...``: neither is it ``...`` nor does a tuple, list or dict of it
    hold one (a function whose body is still ``...`` is caught by :func:`check`)."""
    if answer is Ellipsis:
        return False
    if isinstance(answer, (tuple, list)):
        return all(answered(a) for a in answer)
    if isinstance(answer, dict):
        return all(answered(a) for a in answer.values())
    return True


class _Blank(Exception):
    """A function answer returned ``...``: its body is not written yet."""


def _blank_aware(answer: Any) -> Any:
    """``answer`` with each function the student wrote (alone or in a tuple or list; not a model,
    which is callable too) raising _Blank where it returns ``...``: the test needs no special case."""
    if isinstance(answer, (tuple, list)):
        return type(answer)(_blank_aware(a) for a in answer)
    if not inspect.isfunction(answer):
        return answer
    function = answer

    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if not answered(result):
            raise _Blank
        return result

    return wrapped


def check(answer: Any, test: Callable[[Any], Any], why: str = "",
          right: str | Callable[[Any], str] = "") -> bool | None:
    """Check an exercise's answer and print one line about it.

    Args:
        answer: The student's value (``...`` while unanswered), or a function they wrote.
        test: Called with ``answer``; returns a truthy value when it is right. A falsy result or an
            exception means wrong. A function answer that returns ``...`` (its body not written
            yet) counts as not answered; the test must call the function it is given.
        why: What is wrong, said when the test fails (a hint, not the answer).
        right: A sentence added to "right", or a function of the answer that returns one (so it
            can quote a figure of an answer that may still be ``...``).

    Returns:
        None when not answered, False when wrong, True when right: ``assert check(...)`` in a
        solution cell fails on anything but a right answer.
    """
    if not answered(answer):
        print(NOT_ANSWERED)
        return None
    answer = _blank_aware(answer)
    try:
        result = test(answer)
        if not answered(result):
            print(NOT_ANSWERED)
            return None
        ok = bool(result)
        error = ""
    except _Blank:
        print(NOT_ANSWERED)
        return None
    except Exception as e:  # the student's code may raise anything: say so, do not stop the notebook
        ok, error = False, f" ({type(e).__name__}: {e})"
    if not ok:
        print(f"wrong: {why or 'the check does not hold'}{error}")
        return False
    said = right(answer) if callable(right) else right
    print(f"right{': ' + said if said else ''}")
    return True
