"""What the notebooks print is in both of the course's languages (issue 16, item 4): every sentence
goes through ``cifar_tl.tell(en, zh)``, which prints the English and then its Chinese. A bare
``print`` may show only values and code (a table's numbers, a function's source, an error's own
text), or one of the tutorial's own lines written out verbatim. A self-check's message (what a
student reads when an ``assert`` fails) carries its Chinese too."""

import ast
import json
import re
from pathlib import Path

import pytest

from cifar_tl.exercises import has_chinese

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TUTORIAL_PRINTS = {  # the seed tutorial's own print lines, written out in 05 and 06
    "print('device=', device)", "print(i, loss.item(), acc)", "print(correct / total)"}
CODE_LIKE = re.compile(r"\S*[._()=\[\]`/]\S*")  # identifiers, paths, calls: code, not English


def literal_text(node: ast.AST) -> str:
    """The text a call's arguments spell out: string constants and an f-string's fixed parts,
    joined by ``+`` or implicit concatenation; the code inside ``{...}`` (a dict key, a call's
    argument) is left out, as it is not read."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return " ".join(literal_text(v) for v in node.values if not isinstance(v, ast.FormattedValue))
    if isinstance(node, ast.BinOp):
        return literal_text(node.left) + " " + literal_text(node.right)
    if isinstance(node, ast.IfExp):
        return literal_text(node.body) + " " + literal_text(node.orelse)
    if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
        return " ".join(literal_text(a) for a in node.args)
    return ""


def english_words(text: str) -> list[str]:
    """The English words of ``text`` once code-like tokens and format specs are taken out."""
    return re.findall(r"\b[A-Za-z]{3,}\b", CODE_LIKE.sub(" ", text))


def python_of(source: str) -> str:
    """A code cell without its IPython magics and shell lines, which are not Python."""
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))


def sentences(source: str):
    """(line, kind, English words, has Chinese) for each print() and tell() call of a code cell."""
    source = python_of(source)
    for call in ast.walk(ast.parse(source)):
        if isinstance(call, ast.Call) and isinstance(call.func, (ast.Name, ast.Attribute)):
            name = call.func.id if isinstance(call.func, ast.Name) else call.func.attr
            if name in ("print", "tell"):
                text = ast.get_source_segment(source, call)
                zh = literal_text(call.args[1]) if name == "tell" and len(call.args) > 1 else ""
                yield text, name, english_words(literal_text(call)), has_chinese(zh)


def assert_messages(source: str):
    """(text, English words, has Chinese) of each assert's message in a code cell."""
    source = python_of(source)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert) and node.msg is not None:
            text = literal_text(node.msg)
            yield ast.get_source_segment(source, node.msg), english_words(text), has_chinese(text)


def problems(source: str) -> list[str]:
    found = []
    for text, words, chinese in assert_messages(source):
        if len(words) >= 2 and not chinese:
            found.append(f"a self-check's message without its Chinese: {text[:100]}")
    for text, name, words, chinese in sentences(source):
        if name == "print" and len(words) >= 2 and text.strip() not in TUTORIAL_PRINTS:
            found.append(f"English printed without its Chinese (use tell(en, zh)): {text[:100]}")
        if name == "tell" and not chinese:
            found.append(f"tell() without Chinese: {text[:100]}")
    return found


def test_the_check_catches_an_english_print_and_passes_values_and_tell():
    assert problems('print(f"after {n} epochs: accuracy {a:.1%}")')
    assert problems('tell("loss per image", "loss per image")')
    assert not problems('tell(f"after {n} epochs", f"{n} 轮之后")')
    assert not problems('print(inspect.getsource(engine.train_one_epoch))')
    assert not problems('print(f"{type(e).__name__}: {e}")')
    assert not problems("print('device=', device)")  # the tutorial's own line
    assert not problems('print(f"{name:12s} {acc:6.1%}")')
    assert not problems('print(f"{r[\'accuracy\']:.1%} {r[\'images per second\']:.0f}")')  # keys are code
    assert problems('print("loss " + f"{x:.2f}" + " per image")')
    assert problems('print(f"{x}" if ok else "no data found")')
    assert problems('assert ok, "the cached features are the tutorial path\'s features"')
    assert not problems('assert ok, "the cached features are the tutorial path\'s · 缓存的特征就是教程路径的特征"')
    assert not problems('assert ok, f"{got} != {want}"')


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_printed_sentence_is_in_english_and_chinese(path):
    found = []
    for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] == "code":
            found += [f"cell {i}: {p}" for p in problems("".join(cell["source"]))]
    assert not found, f"{path.name}:\n" + "\n".join(found)
