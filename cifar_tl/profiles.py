"""The profiles: what each changes from Config's defaults (the tutorial's recipe), and why."""

from __future__ import annotations

PROFILE_FIELDS: dict[str, dict] = {
    # The tutorial, unchanged: a GPU job (about 10.6 GFLOP per image at 300 px).
    "full": {},
    # The same recipe sized for a 2-core CPU: about 6 minutes with bf16 and OpenVINO, 13 in plain
    # fp32 (benchmarks/README.md, "The cpu profile, re-sized"): a smaller image size and a
    # class-balanced part of the training set, the whole test set.
    "cpu": dict(image_size=192, train_size=40_000),
    # Offline and quick: synthetic CIFAR-like images and resnet18 pretrained by the package on
    # generated images (``--weights synthetic``, pretrain.py: built once per machine, about 2
    # minutes on 2 CPU cores; efficientnet_v2_s would not learn within that budget), at the images'
    # own 32 px, with the tutorial's bare head (standardize auto). fp32 on the torch engine, so that every machine
    # computes the same features and CI's checks of bit-identical runs hold everywhere.
    "smoke": dict(
        source="synthetic",
        backbone="resnet18",
        weights="synthetic",
        image_size=32,
        train_size=1000,
        test_size=500,
        epochs=15,
        batch_size=32,
        precision="fp32",
        engine="torch",
    ),
}
