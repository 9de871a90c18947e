"""How much memory an extraction batch needs, what the device has free, and a batch that fits."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from .errors import OutOfMemory

log = logging.getLogger(__name__)

__all__ = ["bytes_per_image", "fit_batch", "free_memory"]

_ACTIVATIONS: dict = {}  # (backbone name, size) -> bytes of the largest layer's input + output
# Several activations are alive around the largest layer (its input, output and a residual): the
# largest input + output, times this, bounds what one image needs; half of the free memory is used.
_ALIVE_FACTOR = 3
_MEMORY_SHARE = 0.5


def free_memory(device) -> int | None:
    """Bytes the device can still give: CUDA's free memory, Linux's MemAvailable; None unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _largest_layer_bytes(backbone, size: int) -> int:
    """The largest input + output of any layer for one fp32 image of ``size`` px, measured with
    forward hooks on a CPU copy of the backbone: the caller's module, its hooks and its device
    are left alone (a notebook counting the images its backbone sees counts only extraction)."""
    key = (getattr(backbone, "name", type(backbone).__name__), size)
    if key not in _ACTIVATIONS:
        probe = copy.deepcopy(backbone).cpu().float().to(memory_format=torch.contiguous_format)
        largest = [0]

        def hook(_m, inputs, output):
            tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
            largest[0] = max(largest[0], sum(t.numel() for t in tensors) * 4)

        for m in probe.modules():
            m._forward_hooks.clear()  # the copies of the caller's hooks
            m._forward_pre_hooks.clear()
            if not list(m.children()):
                m.register_forward_hook(hook)
        with torch.inference_mode():
            probe(torch.zeros(1, 3, size, size))
        _ACTIVATIONS[key] = largest[0]
    return _ACTIVATIONS[key]


def bytes_per_image(backbone, image_size: int, views: int = 1) -> int:
    """Estimated memory one source image needs during extraction: the backbone's activations
    (measured at 64 px and scaled by the pixel count), times the views, plus the float64 resize."""
    try:
        base, measured_at = _largest_layer_bytes(backbone, 64), 64
    except Exception:  # noqa: BLE001  a model with a fixed input size (ViT): measure at it
        base, measured_at = _largest_layer_bytes(backbone, image_size), image_size
    activations = _ALIVE_FACTOR * base * (image_size / measured_at) ** 2
    resize = 3 * image_size * image_size * (8 + 8 + 4 * (1 + views))
    return int(views * activations + resize)


def fit_batch(backbone, image_size: int, batch: int, views: int, device) -> int:
    """``batch``, or fewer images if that many would not fit in half the free memory.

    Raises:
        OutOfMemory: not even one image fits; lowering the batch would not help.
    """
    free = free_memory(device)
    if free is None:
        return batch
    per_image = bytes_per_image(backbone, image_size, views)
    fits = int(_MEMORY_SHARE * free // per_image)
    if fits < 1:
        raise OutOfMemory(
            f"one image at {image_size} px needs about {per_image / 2**30:.1f} GB for "
            f"{getattr(backbone, 'name', 'the backbone')}, more than the {free / 2**30:.1f} GB free: lower "
            "--image-size (the batch size does not change extraction)")
    if fits < batch:
        log.info("extraction batch lowered from %d to %d images to fit in %.1f GB free", batch, fits,
                 free / 2**30)
    return min(batch, fits)
