"""Progress bars in a notebook: what a saved notebook keeps of them must still display.

tqdm.auto draws an ipywidgets bar in a kernel; saved and reopened, JupyterLab shows "Error
displaying widget: model not found" where it was (seen in a browser), and nbconvert/nbval keep a
frozen "0%" bar. The library's bars are text bars, cleared when done (leave=False)."""

import nbformat
from nbclient import NotebookClient

CELL = """
import sys
from cifar_tl import engine, features, finetune, pretrain
for module in (engine, features, finetune, pretrain):
    for _ in module.tqdm(range(3), desc=module.__name__, leave=False, file=sys.stdout):
        pass
for _ in engine._bar(range(3), "engine bar", True):
    pass
print("done")
"""


def test_a_notebook_keeps_no_widget_of_a_progress_bar(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})], outputs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "done" in text and "cifar_tl.features" in text  # text bars were drawn, then cleared
