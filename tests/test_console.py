"""Terminals: escape codes in names are escaped, no encoding crashes, predict streams, Ctrl-C
while starting up is one line, `import cifar_tl` is cheap."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from cifar_tl import checkpoint, inference
from cifar_tl.config import Config
from cifar_tl.console import safe_text, tell
from cifar_tl.models import MLPHead

from .conftest import ROOT, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_safe_text_escapes_control_characters_and_unencodable_ones():
    assert safe_text("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert safe_text("a\rb\x07c") == "a\\rb\\x07c"  # a carriage return could overwrite a line
    assert safe_text("two\nlines\tand a tab") == "two\nlines\tand a tab"  # layout is kept
    assert safe_text("我的猫", "ascii") == "\\u6211\\u7684\\u732b"
    assert safe_text("我的猫") == "我的猫"


def _head(path, names):
    torch.manual_seed(0)
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=32)
    head = MLPHead(512, len(names), hidden=(8,))
    return checkpoint.save_head(path, head, config=cfg, class_names=names)


def test_tell_says_the_english_then_the_chinese_indented(capsys):
    tell("loss 2.31", "损失 2.31")
    assert capsys.readouterr().out == "loss 2.31\n    损失 2.31\n"
    with pytest.raises(ValueError, match="Chinese"):
        tell("loss 2.31", " ")


def test_predict_escapes_names_and_survives_an_ascii_terminal(tmp_path):
    names = ["\x1b[2J\x1b[31mevil", "猫 cat", "狗 dog"]
    ckpt = _head(tmp_path / "head.pt", names)
    img = tmp_path / "我的猫.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    proc = run_cli("predict", "--checkpoint", ckpt, img, env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\\x1b[2J" in proc.stdout
    assert "\\u732b" in proc.stdout  # 猫, escaped for an ascii terminal


def test_predict_streams_one_file_at_a_time(tmp_path):
    ckpt = _head(tmp_path / "head.pt", ["a", "b"])
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(img)

    def files():
        yield img
        raise RuntimeError("the second file was asked for before the first was given back")

    first = next(inference.iter_predictions(ckpt, files()))
    assert first[0] == str(img) and isinstance(first[1], list)


def test_urls_are_refused_with_advice(tmp_path):
    ckpt = _head(tmp_path / "head.pt", ["a", "b"])
    [(name, result)] = list(inference.predict_files(ckpt, ["https://example.com/cat.jpg"]))
    assert isinstance(result, str) and "URLs are not supported" in result and "download" in result


def test_import_is_cheap():
    code = "import sys, cifar_tl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# torch alone takes longer than 0.8 s to import; each delay twice, as a half-loaded extension
# module failed only some of the time.
@pytest.mark.parametrize("delay", [0.3, 0.5, 0.8, 0.3, 0.5, 0.8])
def test_ctrl_c_while_starting_is_one_line(delay):
    proc = subprocess.Popen([sys.executable, "-m", "cifar_tl", "backbones"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and len(err.strip().splitlines()) <= 1 and "Traceback" not in err, err
