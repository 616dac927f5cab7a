"""``cuda_to_cpu`` (``easyedit/compat/devices.py``): it still works, and it is still needed on a machine without
CUDA."""

import importlib

import pytest
import torch
from transformers import BatchEncoding

import easyedit_liveedit  # noqa: F401  (imports easyeditor)
from easyedit_liveedit.easyedit import compat


# 3. cuda:{device} hard-coded in EasyEdit
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA redirect is a no-op where CUDA exists")
def test_cuda_device_still_fails_on_this_machine():
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).to("cuda:0")
    with pytest.raises(RuntimeError):  # EasyEdit's `device: 0`
        torch.zeros(1).to(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA redirect is a no-op where CUDA exists")
def test_cuda_to_cpu_redirects_every_way_easyeditor_names_cuda():
    evaluate_utils = importlib.import_module("easyeditor.evaluate.evaluate_utils")
    with compat.cuda_to_cpu():
        layer = torch.nn.Linear(2, 2).to("cuda:0")
        made = torch.zeros(2).to(device=torch.device("cuda:0"))
        moved = torch.ones(2).cuda()
        module_cuda = torch.nn.Linear(2, 2).cuda()
        encoded = BatchEncoding({"input_ids": torch.ones(1, 2)}).to("cuda:0")  # SERAC's tokenizer(...).to(device)
        positional = torch.ones(2).to("cuda:1", torch.float16)
        index = torch.ones(2).to(0)
        keyword_index = torch.ones(2).to(device=0)
        module_index = torch.nn.Linear(2, 2).to(0)
        assert torch.ones(2).to(torch.float64).dtype == torch.float64  # dtypes pass through
    moved_tensors = (layer.weight, made, moved, positional, index, keyword_index, module_index.weight,
                     module_cuda.weight, encoded["input_ids"])  # fmt: skip
    assert {t.device.type for t in moved_tensors} == {"cpu"}
    assert positional.dtype == torch.float16
    # Outside the context, nothing is redirected, and torch's own methods are back.
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).to("cuda:0")
    assert "to" not in torch.Tensor.__dict__ and "cuda" not in torch.Tensor.__dict__
    assert torch.nn.Module.to.__name__ == "to" and not hasattr(torch.nn.Module.to, "__wrapped__")
    # And EasyEdit's own helpers that hard-code f"cuda:{device}" get through it.
    assert "cuda:{device}" in open(evaluate_utils.__file__).read()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA redirect is a no-op where CUDA exists")
def test_cuda_to_cpu_nests_and_restores_on_the_outermost_exit():
    with compat.cuda_to_cpu():
        with compat.cuda_to_cpu():
            pass
        assert torch.ones(1).to(0).device.type == "cpu"  # still active after the inner context ended
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).to(0)
