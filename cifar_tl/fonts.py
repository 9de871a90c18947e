"""Chinese in figures: installed CJK fonts join matplotlib's font fallback (``import cifar_tl.viz`` does it).

matplotlib's default font (DejaVu Sans) has no Chinese glyphs: a class name such as 猫 draws as
empty boxes, with one "Glyph missing" warning per character. Since matplotlib 3.6 every family in
``rcParams["font.family"]`` is a fallback for the glyphs the ones before it lack, so Latin text
keeps its usual font and Chinese characters come from the first CJK font installed. Without one,
a single notice says how to install a font: the first time a plot helper is given Chinese text
(matplotlib >= 3.11 then draws boxes silently, from its "Last Resort" font), or instead of the
first of older matplotlib's per-glyph "Glyph missing" warnings, which are silenced.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

# The usual CJK fonts, by platform: Linux and Colab (Noto / Source Han / WenQuanYi), macOS
# (PingFang, Hiragino, Heiti), Windows (Microsoft YaHei, SimHei). Simplified Chinese first.
CJK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "Noto Sans CJK JP",
    "Noto Sans CJK TC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
    "PingFang SC", "Hiragino Sans GB", "Heiti SC", "STHeiti", "Microsoft YaHei", "SimHei",
    "Arial Unicode MS",
)
# File names of those fonts, to find one installed after matplotlib built its font cache.
_CJK_FILES = re.compile(r"(NotoSans(Mono)?CJK|NotoSansSC|SourceHanSans|wqy-|DroidSansFallback|PingFang|"
                        r"Hiragino Sans GB|STHeiti|msyh|simhei)", re.I)
INSTALL_HINT = (
    "Chinese text in figures needs a CJK font and none is installed, so it draws as boxes. "
    "Linux or Colab: `apt-get install -y fonts-noto-cjk` (Colab: `!apt-get -qq install fonts-noto-cjk`), "
    "or anywhere: `pip install mplfonts`; then restart the kernel. macOS and Windows have one already."
)


def installed_cjk_fonts() -> list[str]:
    """The names from ``CJK_FONTS`` that matplotlib can use here, in that order of preference.

    A font installed after matplotlib cached its font list (``apt-get install fonts-noto-cjk`` in
    a running session) is looked for on disk and registered, so a kernel restart is enough.
    """
    from matplotlib import font_manager

    found = _known(font_manager)
    if not found:
        for path in _cjk_font_files(font_manager):
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):  # an unreadable font file: skip it
                continue
        found = _known(font_manager)
    return found


def _known(font_manager) -> list[str]:
    names = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in CJK_FONTS if name in names]


def _cjk_font_files(font_manager) -> list[str]:
    files = font_manager.findSystemFonts()
    try:  # mplfonts (a PyPI package) ships Noto Sans CJK SC
        import mplfonts

        files += [str(p) for p in (Path(mplfonts.__file__).parent / "fonts").glob("*Sans*")]
    except ImportError:
        pass
    return sorted(p for p in files if _CJK_FILES.search(Path(p).name))


class _MissingCJKGlyph:
    """A warnings-filter message pattern (anything with ``match``): it matches matplotlib's
    "Glyph N (\\N{CJK ...}) missing from font(s)" warnings, which the filter then ignores, and
    logs INSTALL_HINT the first time instead."""

    _pattern = re.compile(r"Glyph \d+ \(\\N\{CJK ")

    def __init__(self):
        self.noticed = False

    def match(self, text: str):
        if not self._pattern.match(text):
            return None
        self.notice()
        return True

    def notice(self) -> None:
        """Log INSTALL_HINT, the first time only."""
        if not self.noticed:
            self.noticed = True
            log.warning(INSTALL_HINT)


_missing = _MissingCJKGlyph()
_found: list[str] | None = None  # what use_cjk_fonts found; None before it ran
_CJK_TEXT = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]")


def notice_if_missing(*texts) -> bool:
    """Log INSTALL_HINT once if any of ``texts`` (strings or lists of them) holds CJK characters
    and no CJK font is installed. Returns whether such text will draw as boxes."""
    if _found is None or _found:
        return False
    flat = [t for item in texts for t in (item if isinstance(item, (list, tuple)) else [item])]
    if not any(_CJK_TEXT.search(str(t)) for t in flat if t is not None):
        return False
    _missing.notice()  # the one notice, shared with the warnings filter
    return True


def use_cjk_fonts() -> list[str]:
    """Add the installed CJK fonts to matplotlib's fallback, after the current font families.

    Without any, ignore matplotlib's per-glyph warnings for Chinese characters and log one notice
    (INSTALL_HINT) the first time a figure needs one. Returns the CJK fonts added.
    """
    import matplotlib

    global _found
    found = _found = installed_cjk_fonts()
    families = [f for f in matplotlib.rcParams["font.family"] if f not in CJK_FONTS]
    matplotlib.rcParams["font.family"] = families + found
    if not found and not any(f[1] is _missing for f in warnings.filters):
        # filterwarnings compiles its pattern; swap in ours, which announces itself once.
        warnings.filterwarnings("ignore", message=_MissingCJKGlyph._pattern.pattern, category=UserWarning)
        action, _, category, module, lineno = warnings.filters[0]
        warnings.filters[0] = (action, _missing, category, module, lineno)
    return found
