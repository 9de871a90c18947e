"""Every path normalises images with the weights' own mean and std (``backbones.normalization``):
extraction (run, evaluate), predict, fine-tuning, the tutorial's transforms, lr-find. Shown with
resnet18's weights made to say mean = std = 0.5, as efficientnet_v2_l's do."""

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models as tvm
from torchvision import transforms as T
from torchvision.transforms._presets import ImageClassification

from cifar_tl import data, features, finetune, inference, models
from cifar_tl.config import Config

from .conftest import cli_in_process as _cli

pytestmark = pytest.mark.usefixtures("one_thread")

HALF = (0.5, 0.5, 0.5)
TINY = ("--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "100",
        "--test-size", "100", "--epochs", "1", "--quiet")


@pytest.fixture
def half(monkeypatch):
    """resnet18's ImageNet weights with transforms of mean = std = 0.5 (in this process)."""
    w = tvm.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(w.value, "transforms", functools.partial(ImageClassification, crop_size=224, mean=HALF, std=HALF))
    assert models.normalization("resnet18") == (HALF, HALF)


def _reference(image, size=32):
    """The input the weights expect: the tutorial's transform with the weights' mean and std."""
    return T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(HALF, HALF)])(image)[None]


def test_predict_and_evaluate_normalise_as_the_weights_say(half, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_DATA", str(tmp_path / "data"))
    code, _, err = _cli(capsys, "run", *TINY, "--out", tmp_path / "run")
    assert code == 0, err
    model, meta = inference.load_model(tmp_path / "run" / "head.pt")
    cfg = Config.from_dict(meta["config"])
    ds = data.build_source(cfg, train=False)
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.asarray(ds.raw_image(i))).save(files[-1])
    with torch.no_grad():
        want = [model(_reference(Image.open(f).convert("RGB"))).softmax(1)[0] for f in files]
        # predict
        for (_, top), p in zip(inference.predict_files(tmp_path / "run" / "head.pt", files), want):
            name, prob = top[0]
            assert prob == pytest.approx(p.max().item(), abs=1e-5) and name == meta["class_names"][p.argmax()]
        # the notebooks' own-image widget
        from cifar_tl import widgets

        probs, idx = widgets.top_k(model, files[0], 32)
        assert probs[0].item() == pytest.approx(want[0].max().item(), abs=1e-5)
        # extraction (run and evaluate on cached features)
        images = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
        got = features.extract(model.backbone, images, 32, "cpu", views=("original",), progress=False)[:, 0]
        assert torch.allclose(got, torch.cat([model.backbone(_reference(Image.open(f))) for f in files]), atol=1e-4)
    # the tutorial's transforms (--no-cache), and evaluation as fine-tuning does it
    train_ds, val_ds, test_ds = data.build_datasets(cfg)
    assert tuple(test_ds.transform.transforms[-1].mean) == HALF == tuple(train_ds.transform.transforms[-1].std)
    assert val_ds is None or tuple(val_ds.transform.transforms[-1].mean) == HALF
    ev = finetune.evaluate_dataset(model, test_ds, cfg, "cpu")
    with torch.no_grad():
        ref = torch.cat([model(_reference(Image.fromarray(np.asarray(test_ds.raw_image(i))))) for i in range(len(test_ds))])
    assert ev.preds.tolist() == ref.argmax(1).tolist()


def test_the_feature_cache_key_names_other_normalisations(half):
    """Features extracted with ImageNet's values before are not reused for weights with others."""
    key = functools.partial(features.cache_key, torch.zeros(1, 3, 4, 4, dtype=torch.uint8), [0], "resnet18",
                            None, 32, ("original",), "fp32")
    halved = key()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features, "normalization", lambda name: (data.IMAGENET_MEAN, data.IMAGENET_STD))
        assert key() != halved
