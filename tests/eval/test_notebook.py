from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "tour.ipynb"


@pytest.mark.slow  # the real MiniLM, a tiny-preset EM trained in the notebook
def test_tour_notebook_runs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # The kernel inherits this: one torch thread. With two on a CPU another job keeps busy, the tiny EM
    # cell ran past the 600 s cell timeout (2 min with one thread beside the same job).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The tour trains in a tempfile.mkdtemp folder (~140 MB): under pytest's tmp_path, not left in /tmp by each run.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "torch.Size([7, 32])" in text and "dev_recon_cos" in text
    assert "not good ->" in text and "'similarity_heatmap.png'" in text and "'em-tiny'" in text
    assert len(list(tmp_path.glob("invemb-tour-*/em-tiny"))) == 1
