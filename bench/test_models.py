"""pytest-benchmark: a full training step (zero_grad, forward, loss, backward, Adam) of SRCNN 9-5-5, VDSR-20 and
EDSR-baseline x2, and EDSR-baseline x2's inference on a 512x512 image, minisr (numba, numpy) beside PyTorch on
the same weights -- the cases of bench/compare.py (shapes in bench/_common.py; ``--bench-tiny`` shrinks them).

    pytest bench/test_models.py --benchmark-only --benchmark-group-by=group

Each benchmark first runs its step once untimed and checks the loss (inference: the output) against PyTorch's
forward on the same weights and data; ``test_models_agree`` checks outputs, loss and every parameter gradient
(on two images, or a 48x48 crop for inference). These are long calls (up to seconds): 3 rounds each.
For the interleaved, same-process comparison with peak memory, use bench/compare.py.
"""

from __future__ import annotations

import _common as C  # first: sets the thread counts before NumPy is imported
import numpy as np
import pytest

import minisr

torch = pytest.importorskip("torch")
C.init(C.THREADS)
CASES = [C.model_case(c, C.TINY) for c in C.MODEL_CASES]
IDS = [c.id for c in CASES]
TOL = 1e-4


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_models_agree(case):
    mmodel = C.minisr_model(case)
    tmodel = C.torch_model(case, mmodel.state_dict())
    x, y = C.model_arrays(case)
    if case.mode == "infer":
        errs = C.models_agree(case, mmodel, tmodel, np.ascontiguousarray(x[:, :, :48, :48]))
    else:
        errs = C.models_agree(case, mmodel, tmodel, x[:2].copy(), y[:2].copy())
    assert max(errs.values()) <= TOL, f"minisr and PyTorch differ on {case.label}: relative errors {errs}"


def _reference(case, tmodel, x, y):
    """PyTorch's forward on the untouched weights: the loss of a training case, the output of inference."""
    with torch.no_grad():
        out = tmodel(torch.from_numpy(x.copy()))
        if case.mode == "infer":
            return out.numpy()
        loss = torch.nn.functional.mse_loss if case.loss == "mse" else torch.nn.functional.l1_loss
        return loss(out, torch.from_numpy(y.copy())).item()


@pytest.mark.parametrize("impl", C.IMPLS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_model(benchmark, case, impl):
    benchmark.group = f"model: {case.label}"
    benchmark.extra_info.update(batch=case.batch, input=case.size, output=case.target)
    mmodel = C.minisr_model(case)
    tmodel = C.torch_model(case, mmodel.state_dict())
    x, y = C.model_arrays(case)
    want = _reference(case, tmodel, x, y)
    backend = "numpy" if impl == "torch" else impl.split("-", 1)[1]
    with minisr.use_backend(backend):
        fn = C.torch_step(case, tmodel, x, y) if impl == "torch" else C.minisr_step(case, mmodel, x, y)
        got = fn()  # untimed: the first step's loss is computed on the untouched weights
        err = C.rel_err(got, want)
        assert err <= TOL, f"{impl} {case.label}: relative error {err:.3g} against PyTorch's forward"
        benchmark.pedantic(fn, rounds=3, iterations=1)
