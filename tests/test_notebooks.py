"""The notebooks as a course: Colab badges and install cells agree with the one repository URL, the
install cell works in a fresh environment, exercises are blank with a bare check and no solution in view, smoke runs
say they are smoke, and profile facts come from Config."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_tl import exercises

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
INSTALL_SPEC = 'f"cifar-tl @ git+{REPO_URL}"'


def repository_url() -> str:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("urls", {})
    assert "Repository" in urls, "pyproject.toml needs [project.urls] Repository = ..."
    return urls["Repository"].rstrip("/")


def cells(path: Path) -> list[dict]:
    return [dict(c, source="".join(c["source"])) for c in json.loads(path.read_text())["cells"]]


def install_cell(path: Path) -> str:
    found = [c["source"] for c in cells(path) if c["cell_type"] == "code" and "REPO_URL =" in c["source"]]
    assert len(found) == 1, f"{path.name}: {len(found)} install cells"
    return found[0]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 9


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badge_and_install_cell_point_at_the_repository(path):
    url = repository_url()
    owner_repo = url.removeprefix("https://github.com/")
    first = cells(path)[0]["source"]
    badge = f"(https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{path.name})"
    assert "colab-badge.svg" in first and badge in first, f"{path.name}: no Open-in-Colab badge for {badge}"
    source = install_cell(path)
    assert f'REPO_URL = "{url}"' in source
    assert 'if "google.colab" in sys.modules and importlib.util.find_spec("cifar_tl") is None:' in source
    assert INSTALL_SPEC in source
    # Every notebook carries the same cell, and it runs before anything imports the package.
    assert source == install_cell(NOTEBOOKS[0])
    code = [c["source"] for c in cells(path) if c["cell_type"] == "code"]
    first_import = next(i for i, s in enumerate(code) if re.search(r"^(from|import) cifar_tl", s, re.M))
    assert code.index(source) < first_import


def _run_install_cell(python: str, cwd: Path, source: str, colab: bool) -> subprocess.CompletedProcess:
    fake = "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n" if colab else ""
    after = "\nimport cifar_tl\nprint('IMPORTED', cifar_tl.__file__)\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    # Offline: no index; the checkout builds with the setuptools the venv sees (no isolated build env).
    env.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run([python, "-c", fake + source + after], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_install_cell_installs_the_package_in_a_fresh_environment(tmp_path):
    """The install cell's own code, in a fresh virtual environment with a fake ``google.colab``,
    installs from a copy of this checkout instead of the git URL (the same pip call, another source)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, checkout / name)
    shutil.copytree(ROOT / "cifar_tl", checkout / "cifar_tl", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch & co. (and pip, setuptools) come from the test's environment, as Colab has them
    # preinstalled; a plain path, so its .pth files, and with them an editable cifar_tl, are ignored.
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    Path(site, "zz_host.pth").write_text("\n".join(ours) + "\n")

    source = install_cell(NOTEBOOKS[0])
    assert source.count(INSTALL_SPEC) == 1
    local = source.replace(INSTALL_SPEC, repr(f"cifar-tl @ {checkout.as_uri()}"))

    outside = _run_install_cell(python, tmp_path, local, colab=False)
    assert "No module named 'cifar_tl'" in outside.stderr, "outside Colab the cell must install nothing"

    inside = _run_install_cell(python, tmp_path, local, colab=True)
    assert inside.returncode == 0, inside.stderr[-3000:]
    assert f"IMPORTED {site}" in inside.stdout, inside.stdout  # the copy in the fresh venv, same process

    again = _run_install_cell(python, tmp_path, local.replace("pip", "pip-must-not-run"), colab=True)
    assert again.returncode == 0 and "IMPORTED" in again.stdout, "a second run must not install again"


# ---- exercises -------------------------------------------------------------------------------
CHECK = re.compile(r'^exercises\.check\("(\d\d\.\d)"(, [A-Za-z_]\w*)*\)$')


def _exercises(path):
    """(prompt, answer cell, check cell, key) for each exercise after the Exercises heading."""
    cs = cells(path)
    start = next(i for i, c in enumerate(cs) if c["cell_type"] == "markdown" and "## Exercises" in c["source"])
    out = []
    for i in range(start, len(cs)):
        m = CHECK.match(cs[i]["source"].strip())
        if cs[i]["cell_type"] == "code" and m:
            out.append((cs[i - 2], cs[i - 1], cs[i], m.group(1)))
    return out, cs[start:]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_are_blank_with_a_bare_check_and_no_solution_in_view(path):
    found, tail = _exercises(path)
    assert found, f"{path.name} has no exercise"
    keys = [key for *_, key in found]
    assert keys == [f"{path.name[:2]}.{k}" for k in range(1, len(keys) + 1)], keys
    for prompt, answer, check, key in found:
        assert prompt["cell_type"] == "markdown" and f'exercises.solution("{key}")' in prompt["source"], key
        assert "<details><summary>中文</summary>" in prompt["source"], f"{key}: the prompt in Chinese too"
        assert answer["cell_type"] == "code" and re.search(r"(=|return)\s*\.\.\.", answer["source"]), answer["source"]
        ex = exercises.exercise(key)
        assert CHECK.match(check["source"].strip()).group(0).count(",") == len(ex.names), check["source"]
    registered = {k for k in exercises.EXERCISES if k.startswith(path.name[:2] + ".")}
    assert registered == set(keys), "every exercise of the library is in its notebook, and back"
    every = cells(path)
    assert not [c for c in every if c.get("metadata", {}).get("jupyter", {}).get("source_hidden")], \
        "no solution in the notebook: collapsed cells show in full on Colab and GitHub"
    code = "\n".join(c["source"] for c in tail if c["cell_type"] == "code")
    assert not re.search(r"assert|lambda|def \w+_right", code), "no reference expression in the exercise cells"
    assert "# TODO" not in "".join(c["source"] for c in every), "answers must not be pre-filled"


# ---- the tutorial's code, Chinese, smoke notes, facts from Config ----------------------------


def _code(path):
    return "\n".join(c["source"] for c in cells(path) if c["cell_type"] == "code")


TUTORIAL_LINES = {  # where each step is taught: the tutorial's own lines, and the assert against the library
    "01_dataset.ipynb": ["class Dataset(torch.utils.data.Dataset):", "def __getitem__(self, i):",
                         "self.compose = torchvision.transforms.Compose(", "data.build_datasets"],
    "04_model.ipynb": ["pretrained.features,", "pretrained.avgpool,", "torch.nn.Flatten(start_dim=1)",
                       "param.requires_grad_(False)", "pretrained.eval()", "models.build_backbone("],
    "05_training.ipynb": ["optimizer.zero_grad()", "loss.backward()", "optimizer.step()", "engine.train_one_epoch("],
    "06_testing.ipynb": ["def tutorial_test(", ".argmax(dim=1)", "engine.evaluate("],
}


@pytest.mark.parametrize("name", sorted(TUTORIAL_LINES))
def test_the_tutorials_code_is_written_out_and_checked_against_the_library(name):
    code = _code(ROOT / "notebooks" / name)
    for line in TUTORIAL_LINES[name]:
        assert line in code, f"{name}: the tutorial's `{line}` is not written out"
    assert re.search(r"^assert .*(equal|==)", code, re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_heading_is_bilingual(path):
    for c in cells(path):
        if c["cell_type"] == "markdown":
            for line in c["source"].splitlines():
                if re.match(r"#{1,4} ", line):
                    assert re.search(r"[\u4e00-\u9fff]", line), f"{path.name}: no Chinese in {line!r}"


def test_readme_notebook_index_is_bilingual_and_complete():
    readme = (ROOT / "README.md").read_text()
    index = readme.split("<!-- notebook-index -->", 1)[1].split("\n\n", 1)[0]
    for path in NOTEBOOKS:
        title = cells(path)[0]["source"].split("\n# ", 1)[1].splitlines()[0]  # "01 · Define ... · 定义数据集"
        number, english, chinese = (part.strip() for part in title.split("·"))
        assert f"[{number} {english} · {chinese}](notebooks/{path.name})" in index, path.name
    rows = [r for r in index.splitlines() if r.startswith("| [")]
    assert rows and all(re.search(r"[\u4e00-\u9fff]", r.rsplit("|", 2)[1]) for r in rows), "a Chinese column"


def test_glossary_has_the_terms():
    glossary = next(c["source"] for c in cells(ROOT / "notebooks" / "00_setup.ipynb") if "## Glossary" in c["source"])
    for zh, en in [("冻结", "freeze"), ("特征", "features"), ("批归一化", "BatchNorm"), ("微调", "fine-tuning"),
                   ("数据增强", "augmentation"), ("解冻", "unfreeze"), ("分层学习率", "discriminative"),
                   ("预热", "warm-up"), ("余弦衰减", "cosine"), ("学习率查找", "LR finder"), ("验证集", "validation"),
                   ("过拟合", "overfitting"), ("交叉熵", "cross-entropy"), ("预设配置", "profile")]:
        assert re.search(rf"\| {zh}[^|]*\| [^|]*{en}", glossary), (zh, en)


def test_the_glossarys_chinese_block_explains_every_term_in_chinese():
    glossary = next(c["source"] for c in cells(ROOT / "notebooks" / "00_setup.ipynb") if "## Glossary" in c["source"])
    english, chinese = glossary.split("<details>")

    def terms(text):  # {term: its one-line explanation}, from the table's rows
        rows = [r.split("|")[1:-1] for r in text.splitlines() if r.startswith("| ") and "---" not in r]
        return {r[0].strip(): r[-1].strip() for r in rows[1:]}

    assert terms(english) and terms(chinese).keys() == terms(english).keys()
    assert all(exercises.has_chinese(line) for line in terms(chinese).values())


@pytest.mark.parametrize("name", ["03_transfer_learning.ipynb", "04_model.ipynb", "05_training.ipynb",
                                  "06_testing.ipynb", "07_your_own_images.ipynb", "08_faster_cached_features.ipynb"])
def test_smoke_runs_say_so(name):
    code = [c["source"] for c in cells(ROOT / "notebooks" / name) if c["cell_type"] == "code"]
    setup = next(i for i, s in enumerate(code) if "cfg = cifar_tl.notebook_config(profile" in s)
    assert code[setup + 1].startswith("viz.smoke_note(cfg)"), "the note comes right after the profile is chosen"


def test_profile_facts_are_read_from_config():
    text = "\n".join(c["source"] for p in NOTEBOOKS[:2] for c in cells(p))
    assert "Config.for_profile(name)" in text
    from cifar_tl import Config

    cpu = Config.for_profile("cpu")
    for stale in ("112 px", "5,000 training images", f"{cpu.image_size} px, {cpu.train_size:,}"):
        assert stale not in text, f"a profile fact typed by hand: {stale!r}"


# ---- both languages --------------------------------------------------------------------------

CJK = re.compile(r"[\u4e00-\u9fff]")
CHINESE_BLOCK = re.compile(r"<details><summary>中文</summary>\n\n(.*?)\n\n</details>", re.S)
# Lines that carry both languages themselves: headings, the badge, table rows, "Next: [English · 中文](...)".
NO_PROSE = re.compile(r"^\s*(#{1,6} .*|\[!\[.*|\|.*\||(Next|Back to the start): \[[^\]]*[\u4e00-\u9fff][^\]]*\]\([^)]*\)\.?|)\s*$")


def needs_chinese(source: str) -> bool:
    """Whether a markdown cell has English prose outside its Chinese block (headings, the badge and
    tables, which carry both languages in their own lines, do not count)."""
    english = CHINESE_BLOCK.sub("", source)
    return any(re.search(r"[A-Za-z]", line) for line in english.splitlines() if not NO_PROSE.match(line))


def has_chinese(source: str) -> bool:
    """A ``<details><summary>中文</summary>`` block, blank lines inside so markdown renders, with Chinese in it."""
    return any(CJK.search(block) for block in CHINESE_BLOCK.findall(source))


def _markdown(path, exercises: bool):
    """(index, source) of the markdown cells before "## Exercises" (exercises=False) or from it on,
    the last cell (the link onwards) counted with the lesson."""
    cs = cells(path)
    start = next((i for i, c in enumerate(cs) if c["source"].startswith("## Exercises")), len(cs))
    keep = (lambda i: start <= i < len(cs) - 1) if exercises else (lambda i: i < start or i == len(cs) - 1)
    return [(i, c["source"]) for i, c in enumerate(cs) if c["cell_type"] == "markdown" and keep(i)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_lesson_cell_is_in_english_and_chinese(path):
    for i, source in _markdown(path, exercises=False):
        if needs_chinese(source):
            assert has_chinese(source), f"{path.name} cell {i}: no Chinese block for {source[:120]!r}"


def prose_before_a_heading(source: str) -> bool:
    """Whether a cell's English prose runs on into a new section: its Chinese block, at the end,
    would then be read under the next heading (the badge above the title does not count)."""
    lines = [line for line in CHINESE_BLOCK.sub("", source).splitlines() if line.strip()]
    return any(line.startswith("#") and any(not NO_PROSE.match(p) for p in lines[:k])
               for k, line in enumerate(lines))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_cells_chinese_sits_in_the_section_of_its_english(path):
    assert prose_before_a_heading("Text.\n\n## Next section\n\nMore.")  # the check itself
    assert not prose_before_a_heading("[![Open In Colab](x)](y)\n\n# 00 · Setup\n\nText.")
    for i, c in enumerate(cells(path)):
        if c["cell_type"] == "markdown":
            assert not prose_before_a_heading(c["source"]), f"{path.name} cell {i}: split it at its heading"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_cell_is_in_english_and_chinese(path):
    for i, source in _markdown(path, exercises=True):
        if needs_chinese(source):
            assert has_chinese(source), f"{path.name} cell {i}: no Chinese block for {source[:120]!r}"


def test_the_language_check_rejects_a_cell_without_chinese():
    english = "Average pooling takes the mean of each channel."
    assert needs_chinese(english) and not has_chinese(english)
    assert not has_chinese(english + "\n\n<details><summary>中文</summary>\n\nno Chinese here\n\n</details>")
    assert not has_chinese(english + "\n\n<details><summary>中文</summary>平均池化</details>")  # no blank lines: not rendered
    both = english + "\n\n<details><summary>中文</summary>\n\n平均池化对每个通道取平均。\n\n</details>"
    assert has_chinese(both)
    assert not needs_chinese("## Stages · 阶段\n\nNext: [01 Define the dataset · 定义数据集](01_dataset.ipynb).")
    assert needs_chinese("Next: [07 Your own images](07_your_own_images.ipynb).")  # a link without Chinese


TUTORIAL_COMMENTS = {  # the tutorial's own Chinese comments, verbatim, in the code written out from it
    "01_dataset.ipynb": ["#在线加载数据集", "#原本是32*32的,缩放到300*300,这是为了适应预训练模型的习惯,便于它抽取图像特征",
                         "#随机左右翻转,这是一种图像增强,很显然,左右翻转不影响图像的分类结果", "#图像转矩阵数据,值域是0-1之间",
                         "#投影也是为了适应预训练模型的习惯", "#取数据", "#应用compose,图像转数据"],
    "04_model.ipynb": ["#加载预训练模型", "#重新组装模型,只要特征抽取部分", "#锁定参数,不训练"],
    "05_training.ipynb": ["#注意这里的参数列表,只包括要训练的参数即可", "#如果使用gpu,数据要搬运到显存里"],
    "06_testing.ipynb": ["#加载测试数据集,共10000条数据"],
}


@pytest.mark.parametrize("name", sorted(TUTORIAL_COMMENTS))
def test_the_tutorials_chinese_comments_are_kept_verbatim(name):
    code = _code(ROOT / "notebooks" / name)
    for comment in TUTORIAL_COMMENTS[name]:
        assert comment in code, f"{name}: the tutorial's comment {comment!r} is missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_parameters_are_checked_before_any_work(path):
    """papermill's -p epochs 0 (or -1, 1.5) is refused at once in one line: the cell that builds the
    config passes every numeric parameter of the parameters cell to notebook_config, and nothing
    turns a 0 into the profile's value with ``or``."""
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    params = next(c for c in code if "parameters" in c.get("metadata", {}).get("tags", []))
    names = [m.group(1) for m in re.finditer(r"^(\w+(?:, \w+)*) = ", "".join(params["source"]), re.M)]
    values = {}
    exec("".join(params["source"]), {}, values)  # noqa: S102  (the notebook's own parameters cell)
    numeric = [n for n in values if isinstance(values[n], (int, float)) and not isinstance(values[n], bool)
               or values[n] is None and n != "profile" and not n.endswith("_path")]
    builder = "".join(next(c for c in code if "notebook_config(" in "".join(c["source"]))["source"])
    call = builder[builder.index("notebook_config("):]
    call = call[: call.index(")") + 1]
    assert names, "no parameters found"
    for name in numeric:
        assert re.search(rf"=\s*{name}\b", call), f"{path.name}: {name} is not checked by notebook_config"
    source = "".join("".join(c["source"]) for c in code)
    assert not re.search(r"\b(\w+) = \1 or cfg\.", source), "`x = x or cfg.x` turns 0 into the profile's value"
    first = next(i for i, c in enumerate(code) if re.search(r"^import torch", "".join(c["source"]), re.M))
    lines = [line for line in "".join(code[first]["source"]).splitlines() if line.startswith("import ")]
    assert lines[0].startswith("import cifar_tl"), "cifar_tl must load before torch (cifar_tl.threads)"


def test_a_unit_test_run_after_a_notebook_does_not_see_the_notebooks_environment(tmp_path):
    """notebooks/conftest.py sets CIFAR_TL_EXERCISES=verify (and the smoke profile) for nbval; a unit
    test outside notebooks/ that runs after a notebook in the same session must not inherit it."""
    import shutil
    import subprocess
    import sys

    import nbformat

    (tmp_path / "nb").mkdir()
    (tmp_path / "t").mkdir()
    shutil.copy(ROOT / "notebooks" / "conftest.py", tmp_path / "nb" / "conftest.py")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nassert os.environ['CIFAR_TL_EXERCISES'] == 'verify'")]), tmp_path / "nb" / "a.ipynb")
    (tmp_path / "t" / "test_after.py").write_text(
        "import os\n\ndef test_env():\n    assert os.environ.get('CIFAR_TL_EXERCISES') != 'verify'\n"
        "    assert os.environ.get('CIFAR_TL_PROFILE') is None\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAR_TL_")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "nb/a.ipynb",
                           "t/test_after.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
