"""Fine-tuning through `run`: model.pt, evaluate reproduces it, resume, metrics, lr-find."""

import json

import pytest
import torch

from cifar_tl import cli, runs

from .conftest import cli_in_process as _cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "200",
        "--test-size", "100", "--quiet")




@pytest.fixture(scope="module")
def runs_made(tmp_path_factory):
    """A frozen run, a fine-tuning run of 2 epochs, and the same interrupted during its second
    fine-tuning epoch, then resumed."""
    from cifar_tl import finetune

    base = tmp_path_factory.mktemp("ft")
    made = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIFAR_TL_DATA", str(base / "data"))
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for name, extra in (("frozen", ()), ("ft", ("--unfreeze", "2"))):
                assert cli.main(["run", *TINY, "--epochs", "2", *extra, "--out", str(base / name)]) == 0
                made[name] = base / name
            real = finetune.ImageBatches.set_epoch

            def ctrl_c_in_the_second_epoch(self, epoch):
                if self.train and epoch == 1:
                    raise KeyboardInterrupt
                real(self, epoch)

            mp.setattr(finetune.ImageBatches, "set_epoch", ctrl_c_in_the_second_epoch)
            out = base / "interrupted"
            assert cli.main(["run", *TINY, "--epochs", "2", "--unfreeze", "2", "--out", str(out)]) == 1
            mp.setattr(finetune.ImageBatches, "set_epoch", real)
            assert len(json.loads((out / "history.json").read_text())) == 2  # head + 1 fine-tune epoch
            assert cli.main(["run", "--resume", str(out)]) == 0
            made["resumed"] = out
        finally:
            torch.set_num_threads(n)
    return made


def test_a_fine_tuning_run_writes_model_pt_and_trains_more_parameters(runs_made):
    ft, frozen = runs_made["ft"], runs_made["frozen"]
    assert (ft / "model.pt").is_file() and not (ft / "head.pt").exists()
    assert (frozen / "head.pt").is_file() and not (frozen / "model.pt").exists()
    m, f = (json.loads((d / "metrics.json").read_text()) for d in (ft, frozen))
    assert m["trainable_params"] > f["trainable_params"] and m["frozen_params"] < f["frozen_params"]
    assert m["trainable_params"] + m["frozen_params"] == f["trainable_params"] + f["frozen_params"]
    assert set(f["lr_groups"]) == {"head"}
    assert {"head", "layer4", "layer3"} <= {k.split(" ")[0] for k in m["lr_groups"]}
    assert m["images_per_second"] > 0 and "fine_tune" in m["seconds"]
    phases = [row.get("phase") for row in json.loads((ft / "history.json").read_text())]
    assert phases == ["head", "fine-tune", "fine-tune"]
    assert "model.pt" in runs.written_files(ft)


def test_evaluate_model_pt_reproduces_the_run_exactly(runs_made, capsys):
    ft = runs_made["ft"]
    acc = json.loads((ft / "metrics.json").read_text())["test_accuracy"]
    code, out, err = _cli(capsys, "evaluate", "--checkpoint", ft / "model.pt", "--quiet")
    assert code == 0, err
    assert f"test accuracy {acc:.4f}" in out


def test_a_resumed_fine_tuning_run_ends_bit_identical(runs_made):
    a = torch.load(runs_made["ft"] / "model.pt", weights_only=True)
    b = torch.load(runs_made["resumed"] / "model.pt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys() and a["state_dict"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    for k, v in a["head"]["state_dict"].items():
        assert torch.equal(v, b["head"]["state_dict"][k]), k
    ha, hb = (json.loads((runs_made[n] / "history.json").read_text()) for n in ("ft", "resumed"))
    assert [r["val_accuracy"] for r in ha] == [r["val_accuracy"] for r in hb]


def test_predict_uses_the_fine_tuned_model(runs_made, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (30, 200, 30)).save(img)
    code, out, err = _cli(capsys, "predict", "--checkpoint", runs_made["ft"] / "model.pt", img)
    assert code == 0, err
    assert out.splitlines()[0].endswith("x.png") and len(out.splitlines()) == 6


def test_unfreeze_more_stages_than_the_backbone_has_exits_2(tmp_path, capsys):
    code, _, err = _cli(capsys, "run", *TINY, "--epochs", "1", "--unfreeze", "9", "--out", tmp_path / "x")
    assert code == 2 and len(err) == 1 and "unfreeze" in err[0] and "resnet18" in err[0], err


def test_lr_find_prints_a_suggestion_and_writes_the_plot(tmp_path, capsys):
    code, out, err = _cli(capsys, "lr-find", *TINY, "--out", tmp_path)
    assert code == 0, err
    assert "suggested learning rate" in out and (tmp_path / "lr_find.png").stat().st_size > 1000
