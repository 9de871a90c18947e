"""Is the synthetic set learnable by a frozen random backbone + MLP head? (the smoke profile's premise)

python benchmarks/smoke_learnability.py --size 64 --epochs 15 --n-per-class 10
"""

import argparse
import importlib.util
import pathlib
import time

import numpy as np
import torch
import torchvision
from torch import nn

# Load cifar_tl/synthetic.py by path, so this runs whatever state the rest of the package is in.
_path = pathlib.Path(__file__).resolve().parents[1] / "cifar_tl" / "synthetic.py"
_spec = importlib.util.spec_from_file_location("cifar_tl_synthetic", _path)
synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def build_backbone(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "efficientnet_v2_s":
        m = torchvision.models.efficientnet_v2_s(weights=None)
        return nn.Sequential(m.features, m.avgpool, nn.Flatten()).eval()
    m = torchvision.models.resnet18(weights=None)
    m.fc = nn.Identity()
    return m.eval()


@torch.inference_mode()
def extract(backbone: nn.Module, images: np.ndarray, size: int, flip: bool = False) -> torch.Tensor:
    out = []
    for i in range(0, len(images), 100):
        x = torch.from_numpy(images[i : i + 100]).permute(0, 3, 1, 2)
        x = nn.functional.interpolate(
            x.float(), size=(size, size), mode="bilinear", align_corners=False
        )
        x = (x / 255.0 - MEAN) / STD
        if flip:
            x = x.flip(-1)
        out.append(backbone(x))
    return torch.cat(out)


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    # Random-backbone features barely vary across images (std ~3e-6 per dimension), so scale
    # each dimension by its own train std; the floor is relative to the typical std, not absolute.
    mean = train.mean(0)
    std = train.std(0)
    std = std.clamp_min(1e-3 * std.mean().item() + 1e-30)
    return [(t - mean) / std for t in (train, *others)]


def head(width: int, n_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, n_classes)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--n-per-class", type=int, default=10)
    p.add_argument("--n-test-per-class", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--backbone", choices=["efficientnet_v2_s", "resnet18"], default="efficientnet_v2_s"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    x_train, y_train = synthetic.make_images(a.n_per_class, seed=2 * a.seed)
    x_test, y_test = synthetic.make_images(a.n_test_per_class, seed=2 * a.seed + 1)
    backbone = build_backbone(a.backbone)

    t0 = time.perf_counter()
    f_orig = extract(backbone, x_train, a.size)
    f_flip = extract(backbone, x_train, a.size, flip=True)
    f_test = extract(backbone, x_test, a.size)
    t_extract = time.perf_counter() - t0
    raw_std = torch.cat([f_orig, f_flip]).std(0).median().item()
    both, f_test = standardise(torch.cat([f_orig, f_flip]), f_test)
    views = torch.stack([both[: len(f_orig)], both[len(f_orig) :]], dim=1)  # (N, 2, width)

    torch.manual_seed(a.seed)
    model = head(views.shape[-1], len(synthetic.CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.from_numpy(y_train)
    t0 = time.perf_counter()
    for _ in range(a.epochs):
        model.train()
        view = torch.randint(0, 2, (len(y),))  # original or flipped, per sample per epoch
        feats = views[torch.arange(len(y)), view]
        for idx in torch.randperm(len(y)).split(a.batch_size):
            loss = nn.functional.cross_entropy(model(feats[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    t_train = time.perf_counter() - t0
    model.eval()
    with torch.inference_mode():
        acc = (model(f_test).argmax(1).numpy() == y_test).mean()

    print(
        f"backbone={a.backbone} size={a.size} n_per_class={a.n_per_class} batch={a.batch_size} "
        f"epochs={a.epochs} seed={a.seed} | raw feature std (median dim) {raw_std:.2e} | "
        f"test top-1 {100 * acc:.1f}% | extract {t_extract:.1f}s train {t_train:.1f}s"
    )


if __name__ == "__main__":
    main()
