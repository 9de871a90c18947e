"""Packaging: pyproject and environment.yml agree; notebooks are committed clean."""

import json
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = (ROOT / "environment.yml").read_text()
    deps = env.split("dependencies:", 1)[1]
    listed = {_name(m) for m in re.findall(r"^\s+- ([^\n#:]+)$", deps, re.M)} - {"-e"}
    assert wanted <= listed, f"missing from environment.yml: {sorted(wanted - listed)}"
    assert listed <= wanted | {"python", "pip"}, f"only in environment.yml: {sorted(listed - wanted)}"


def test_notebooks_are_committed_without_outputs():
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [] and cell.get("execution_count") is None, nb_path.name
