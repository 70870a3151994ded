"""An EM run on the onnxruntime backbone encodes as on torch."""
import torch

import invemb

TEXTS = ["the bank", "the cat sat on the mat", "a", "new york city is big and the river runs fast and slow", "not good"]


def test_em_run_loads_with_the_onnx_runtime(tiny_em_run):
    run, _, _ = tiny_em_run
    a = invemb.load(run).encode(TEXTS)
    em = invemb.load(run, runtime="onnx")
    assert em.backbone.runtime == "onnx"
    assert torch.allclose(a, em.encode(TEXTS), atol=1e-4)
