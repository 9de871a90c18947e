"""The loops: evaluation sees every test sample once; fit records a weighted history."""

import torch

from cifar_tl import data, engine
from cifar_tl.models import TransferModel
from cifar_tl.synthetic import SyntheticCIFAR


class CountingDataset(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds, self.calls = ds, []

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.calls.append(i)
        return self.ds[i]


def test_evaluate_sees_each_test_sample_exactly_once(tiny_cfg):
    model = TransferModel.from_config(tiny_cfg, num_classes=100)
    ds = CountingDataset(SyntheticCIFAR(train=False, n_per_class=1, transform=data.eval_transform(32)))
    loader = data.make_loader(ds, 8, train=False)  # 100 images: the last batch holds 4
    ev = engine.evaluate(model, loader, "cpu", progress=False)
    assert sorted(ds.calls) == list(range(100))
    assert ev.n == 100 and len(ev.preds) == 100 and ev.top5_preds.shape == (100, 5)
    assert torch.equal(ev.targets, torch.tensor(ds.ds.targets))
    assert 0 <= ev.accuracy <= ev.top5 <= 1


def test_metrics_are_weighted_by_sample():
    """A last batch of 1 must not weigh as much as a full batch (averaging batch means would)."""
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.bias.zero_()
    x = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]])  # 4 right answers for label 0 ...
    y = torch.tensor([0, 0, 0, 0, 0])  # ... and 1 wrong one in the last batch
    loader = list(zip(x.split(4), y.split(4)))
    ev = engine.evaluate(head, loader, "cpu", progress=False)
    assert abs(ev.accuracy - 0.8) < 1e-6  # not (1.0 + 0.0) / 2


def test_fit_history_and_continuation():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    loader = list(zip(x.split(16), y.split(16)))
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    hist = engine.fit(head, loader, loader, epochs=2, progress=False)
    assert [r["epoch"] for r in hist] == [1, 2]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5", "seconds"} <= set(hist[0])
    hist = engine.fit(head, loader, None, epochs=3, history=hist, progress=False)
    assert [r["epoch"] for r in hist] == [1, 2, 3]


def test_predict_returns_top_k_probabilities():
    head = torch.nn.Linear(4, 10)
    probs, idx = engine.predict(head, torch.randn(3, 4), k=5)
    assert probs.shape == idx.shape == (3, 5)
    assert (probs[:, :-1] >= probs[:, 1:]).all() and (probs.sum(1) <= 1 + 1e-6).all()
