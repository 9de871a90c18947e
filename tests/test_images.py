"""Images given to predict: every common kind opens upright as 8-bit RGB; a bad file is one clear line."""

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifar_tl import checkpoint, images, inference
from cifar_tl.config import Config
from cifar_tl.errors import ImageError
from cifar_tl.models import MLPHead

from .conftest import damaged, run_cli


def _save(tmp_path, name, im, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def _marked(size=(60, 40)):
    """Blue, with a red 10x10 square in the top-left corner: shows where a rotation moved it."""
    im = Image.new("RGB", size, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 10))
    return im


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none: what a decompression bomb looks like
    to PIL's size check, without spending the memory."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _pixel(im, xy):
    return tuple(int(v) for v in np.asarray(im)[xy[1], xy[0]])


# --------------------------------------------------------------------------- each kind of image
CASES = {
    # name: (image, file name, save kwargs, expected top-left RGB)
    "grayscale": (lambda: Image.new("L", (7, 5), 200), "g.png", {}, (200, 200, 200)),
    "1-bit": (lambda: Image.new("1", (7, 5), 1), "b.png", {}, (255, 255, 255)),
    "rgba, transparent red on white": (lambda: Image.new("RGBA", (7, 5), (255, 0, 0, 0)), "a.png", {},
                                       (255, 255, 255)),
    "rgba, opaque red": (lambda: Image.new("RGBA", (7, 5), (255, 0, 0, 255)), "o.png", {}, (255, 0, 0)),
    "gray + alpha": (lambda: Image.new("LA", (7, 5), (0, 255)), "la.png", {}, (0, 0, 0)),
    "palette": (lambda: Image.new("RGB", (7, 5), (0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE), "p.png", {}, (0, 128, 0)),
    "palette with a transparent colour": (lambda: Image.new("P", (7, 5), 3), "t.gif", {"transparency": 3},
                                          (255, 255, 255)),
    "16-bit gray, full scale": (lambda: Image.fromarray(np.full((5, 7), 65535, np.uint16)), "w16.png", {},
                                (255, 255, 255)),
    "16-bit gray, half scale": (lambda: Image.fromarray(np.full((5, 7), 32896, np.uint16)), "h16.png", {},
                                (128, 128, 128)),
    "16-bit gray tiff, big-endian": (lambda: Image.new("I;16B", (7, 5), 65535), "b16.tiff", {},
                                     (255, 255, 255)),
    "32-bit int tiff": (lambda: Image.new("I", (7, 5), 65535), "i32.tiff", {}, (255, 255, 255)),
    "float tiff in [0, 1]": (lambda: Image.new("F", (7, 5), 0.5), "f.tiff", {}, (128, 128, 128)),
    "CMYK jpeg": (lambda: Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "c.jpg", {"quality": 100},
                  (255, 255, 255)),
    "CMYK tiff": (lambda: Image.new("CMYK", (7, 5), (255, 0, 255, 0)), "c.tiff", {}, (0, 255, 0)),
    "YCbCr tiff": (lambda: Image.new("RGB", (7, 5), (10, 200, 30)).convert("YCbCr"), "y.tiff", {}, None),
    "LAB tiff": (lambda: Image.new("LAB", (7, 5), (128, 128, 128)), "lab.tiff", {}, None),
    "webp": (lambda: Image.new("RGB", (7, 5), (255, 0, 0)), "r.webp", {"lossless": True}, (255, 0, 0)),
    "bmp": (lambda: Image.new("RGB", (7, 5), (1, 2, 3)), "x.bmp", {}, (1, 2, 3)),
    "1x1": (lambda: Image.new("RGB", (1, 1), (9, 8, 7)), "one.png", {}, (9, 8, 7)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_kind_of_image_opens_as_8bit_rgb_of_its_size(case, tmp_path):
    make, name, kw, expected = CASES[case]
    src = make()
    im = images.open_image(_save(tmp_path, name, src, **kw))
    assert im.mode == "RGB" and im.size == src.size
    assert np.asarray(im).dtype == np.uint8 and np.asarray(im).shape == (src.size[1], src.size[0], 3)
    if expected is not None:
        assert np.abs(np.subtract(_pixel(im, (0, 0)), expected)).max() <= 2, _pixel(im, (0, 0))


# EXIF orientation: (size after, corner where the stored top-left red square ends up). 6 and 8 are
# the phone's two sideways holds, 3 upside down; 2, 4, 5 and 7 are the mirrored ones.
ORIENTATIONS = {1: ("wide", "top-left"), 2: ("wide", "top-right"), 3: ("wide", "bottom-right"),
                4: ("wide", "bottom-left"), 5: ("tall", "top-left"), 6: ("tall", "top-right"),
                7: ("tall", "bottom-right"), 8: ("tall", "bottom-left")}


@pytest.mark.parametrize("fmt", ["png", "jpg"])
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_every_exif_orientation_is_applied(orientation, fmt, tmp_path):
    """A phone photo stored sideways or upside down with its orientation in EXIF comes out
    upright: for 6 ('rotate 90 clockwise') the size is transposed and the stored top-left corner
    is now at the top right; 3 turns it to the bottom right, 8 to the bottom left."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, f"turned.{fmt}", _marked((60, 40)), exif=exif, quality=95)
    im = images.open_image(path)
    shape, corner = ORIENTATIONS[orientation]
    assert im.size == ((60, 40) if shape == "wide" else (40, 60))
    w, h = im.size
    corners = {"top-left": (2, 2), "top-right": (w - 3, 2), "bottom-left": (2, h - 3), "bottom-right": (w - 3, h - 3)}
    red, blue = (255, 0, 0), (0, 0, 255)
    for name, xy in corners.items():
        assert np.abs(np.subtract(_pixel(im, xy), red if name == corner else blue)).max() < 30, (name, xy)


def test_a_damaged_exif_block_does_not_refuse_the_picture(tmp_path):
    path = _save(tmp_path, "odd.jpg", _marked(), exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert images.open_image(path).size == (60, 40)


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animated_files_give_their_first_frame(fmt, tmp_path):
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / f"anim.{fmt}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0,
                   **({"lossless": True} if fmt == "webp" else {}))
    with Image.open(path) as check:
        assert check.n_frames == 3
    im = images.open_image(path)
    assert im.size == (8, 6) and _pixel(im, (3, 3)) == (255, 0, 0)


def test_a_24_megapixel_photo_opens(tmp_path):
    """6000x4000 (24 MP) is well under PIL's 89 MP decompression-bomb limit: accepted."""
    path = _save(tmp_path, "big.jpg", Image.new("RGB", (6000, 4000), (30, 60, 90)), quality=50)
    im = images.open_image(path)
    assert im.size == (6000, 4000) and im.mode == "RGB"


@pytest.mark.parametrize("width, height", [(12000, 8000), (20000, 20000)])
def test_above_the_decompression_bomb_limit_is_a_clear_error(width, height, tmp_path):
    """96 MP (PIL only warns) and 400 MP (PIL raises) are both refused in one line, before decoding."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(width, height))
    with pytest.raises(ImageError) as e:
        images.open_image(path)
    msg = str(e.value)
    assert "bomb.png" in msg and "megapixels" in msg and "MAX_IMAGE_PIXELS" in msg and "\n" not in msg
    assert f"{width * height / 1e6:.0f} megapixels" in msg


def _bad_files(tmp_path):
    good = io.BytesIO()
    _marked((64, 64)).save(good, "PNG")
    jpeg = io.BytesIO()
    _marked((64, 64)).save(jpeg, "JPEG")
    files = {
        "notes.txt": b"these are my notes, not a picture\n",
        "cut.png": good.getvalue()[: len(good.getvalue()) // 2],
        "cut.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "empty.png": b"",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "folder.png").mkdir()
    return [tmp_path / n for n in (*files, "folder.png", "missing.jpg")]


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    for path in _bad_files(tmp_path):
        with pytest.raises(ImageError) as e:
            images.open_image(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value), str(e.value)


# --------------------------------------------------------------------------- properties
FILE_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "F", "I;16", "I;16B"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["RGB", "RGBA"],
    "GIF": ["L", "P"],
    "BMP": ["1", "L", "P", "RGB"],
}
MEMORY_MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
                "HSV", "I", "F", "I;16", "I;16B", "I;16L"]


def _random_image(mode, w, h, seed):
    """Random bytes in any mode: all pixel values, NaN and infinity floats and negative ints included."""
    n = len(Image.new(mode, (w, h)).tobytes())
    return Image.frombytes(mode, (w, h), np.random.default_rng(seed).bytes(n))


PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
format_and_mode = st.sampled_from([(f, m) for f, modes in FILE_MODES.items() for m in modes])
side = st.integers(1, 48)


@PROPERTY
@given(format_and_mode, side, side, st.integers(0, 2**32 - 1))
def test_open_image_gives_rgb8_of_the_right_size_for_any_mode(fmt_mode, w, h, seed):
    fmt, mode = fmt_mode
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.{fmt.lower()}"
        _random_image(mode, w, h, seed).save(path, fmt)
        im = images.open_image(path)
    a = np.asarray(im)
    assert im.mode == "RGB" and im.size == (w, h) and a.dtype == np.uint8 and a.shape == (h, w, 3)


@PROPERTY
@given(st.sampled_from(MEMORY_MODES), side, side, st.integers(0, 2**32 - 1))
def test_to_rgb_gives_rgb8_of_the_same_size_for_any_mode(mode, w, h, seed):
    im = images.to_rgb(_random_image(mode, w, h, seed))
    assert im.mode == "RGB" and im.size == (w, h)


@PROPERTY
@given(st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"]), st.integers(0, 2**32 - 1),
       st.floats(0, 1), st.integers(0, 255), st.booleans())
def test_damaged_files_give_an_image_error_or_an_rgb_image(fmt, seed, where, byte, truncate):
    """Truncated or corrupted bytes: never an exception other than ImageError."""
    buf = io.BytesIO()
    _random_image("RGB", 24, 16, seed).save(buf, fmt)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d.{fmt.lower()}"
        path.write_bytes(damaged(buf.getvalue(), where, byte, truncate))
        try:
            im = images.open_image(path)
        except ImageError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        else:
            assert im.mode == "RGB"


# --------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def head_checkpoint(tmp_path_factory):
    """A head for a random resnet18 at 32 px, as a smoke run would save it (no training needed)."""
    torch.manual_seed(0)
    head = MLPHead(512, 100, hidden=(16, 16))
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "head.pt"
    return checkpoint.save_head(path, head, config=cfg, class_names=[f"class{i}" for i in range(100)])


def _good_files(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        _save(tmp_path, "photo.png", _marked()),
        _save(tmp_path, "gray16.png", Image.fromarray(np.full((9, 5), 40000, np.uint16))),
        _save(tmp_path, "cmyk.jpg", Image.new("CMYK", (20, 10), (0, 200, 0, 0))),
        _save(tmp_path, "sideways.jpg", _marked(), exif=exif),
        _save(tmp_path, "tiny.png", Image.new("RGB", (1, 1), (1, 1, 1))),
        _save(tmp_path, "big.jpg", Image.new("RGB", (6000, 4000), (90, 60, 30)), quality=40),
        _save(tmp_path, "pic.webp", Image.new("RGBA", (30, 20), (0, 0, 0, 128))),
    ]


def test_predict_files_predicts_the_good_and_names_the_bad(head_checkpoint, tmp_path):
    good, bad = _good_files(tmp_path), _bad_files(tmp_path)
    files = [good[0], *bad, *good[1:]]
    results = inference.predict_files(head_checkpoint, files)
    assert [r[0] for r in results] == [str(f) for f in files]
    for path, result in results:
        if Path(path) in bad:
            assert isinstance(result, str) and path in result and "\n" not in result, result
        else:
            assert isinstance(result, list) and len(result) == 5, (path, result)
            probs = [p for _, p in result]
            assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_cli_predict_reports_bad_files_and_predicts_the_rest(head_checkpoint, tmp_path):
    good, bad = _good_files(tmp_path)[:3], _bad_files(tmp_path)
    proc = run_cli("predict", "--checkpoint", head_checkpoint, good[0], *bad, *good[1:])
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(bad)
    for path, line in zip(bad, errors):
        assert line.startswith("error: ") and str(path) in line, line
    out = proc.stdout.strip().splitlines()
    assert [line for line in out if not line.startswith(" ")] == [str(f) for f in good]
    assert len(out) == 6 * len(good) and all("%" in line for line in out if line.startswith(" "))
