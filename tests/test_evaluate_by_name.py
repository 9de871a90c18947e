"""evaluate --source folder:X matches the folder's classes to the head's by name, as training does."""

import pytest

from .conftest import cli_in_process as _cli
from .test_folders import photos

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head trained on folders {green, red}: solid colours, learnt in a few epochs."""
    from cifar_tl import cli

    base = tmp_path_factory.mktemp("byname")
    root = photos(base / "gr", {"train/green": 8, "train/red": 8, "test/green": 4, "test/red": 4})
    assert cli.main(["run", "--profile", "smoke", "--source", f"folder:{root}", "--weights", "none",
                     "--backbone", "resnet18", "--image-size", "32", "--epochs", "5", "--quiet",
                     "--out", str(base / "run"), "--data-root", str(base / "data")]) == 0
    return base / "run" / "head.pt", base


def _evaluate(capsys, head, folder):
    path, base = head
    return _cli(capsys, "evaluate", "--checkpoint", path, "--source", f"folder:{folder}",
                "--data-root", base / "data", "--quiet")


def test_a_folder_with_a_class_the_head_does_not_know_is_refused_naming_it(head, tmp_path, capsys):
    folder = photos(tmp_path / "gb", {"train/blue": 3, "train/green": 3, "test/blue": 2, "test/green": 2})
    code, out, err = _evaluate(capsys, head, folder)
    assert code == 1 and len(err) == 1 and "does not know 1 class(es)" in err[0] and "'blue'" in err[0], err
    assert "'green', 'red'" in err[0] and not out


def test_a_subset_of_the_heads_classes_is_evaluated_by_name(head, tmp_path, capsys, caplog):
    """{red} alone: red is class 1 of the head but class 0 of the folder. The accuracy must be that
    of the head's own predictions for those images (5: never half right either way)."""
    folder = photos(tmp_path / "r", {"train/red": 3, "test/red": 5})
    code, out, err = _evaluate(capsys, head, folder)
    assert code == 0, err
    assert "evaluating on 1 of the 2 classes" in caplog.text, err
    code, said, _ = _cli(capsys, "predict", "--checkpoint", head[0], *sorted((folder / "test" / "red").iterdir()))
    assert code == 0
    top1 = [lines[1].split()[-1] for lines in (said.split("\n")[i:i + 3] for i in range(0, 15, 3))]
    assert f"test accuracy {top1.count('red') / 5:.4f}" in out, (out, said)
