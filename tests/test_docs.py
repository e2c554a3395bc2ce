"""docs/backprop.md names code in backticks; every name it gives must exist.

What is checked, in the Markdown outside fenced code blocks:
  * file paths (`minisr/nn.py`, `examples/01_conv_backprop_by_hand.py`, ...): the file exists in the repository (a
    bare file name such as `shifted_kernel.py`: somewhere under minisr/);
  * dotted names whose head is a module or class of minisr (`numpy_backend.im2col`, `functional.conv2d`,
    `minisr.set_backend`, `Tensor.backward`, `shifted_kernel.shifted_gemm`, `t.layers` for a Trace ``t``, ...):
    they resolve by import and getattr;
  * bare names after a file path on the same line (the layout table: `minisr/tensor.py`: `Tensor`, `make_result`)
    are attributes of that file's module, and bare calls `name(...)` are attributes of one of minisr's modules
    (or of Tensor, or NumPy's).
Spans that are none of these (expressions, shapes, parameter paths such as `body.3.weight`) are not names.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "backprop.md"]
TOP_DIRS = ("minisr/", "examples/", "tests/", "docs/", "bench/", "kernels/")
MODULE_PREFIXES = ("", "minisr.", "minisr.backends.")
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
LOCAL_CALLS = {"backward_fn"}  # the doc's name for the closure an op records (a local, not a module attribute)


def _instances():
    """Objects that the doc's variable names stand for, to check their attributes."""
    from minisr import Tensor, autograd, nn

    tensor = Tensor(np.zeros(1, np.float32))
    trace = autograd.Trace()
    return {"t": trace, "tr": trace, "model": nn.Module(), "loss": tensor, "x": tensor, "y": tensor,
            "tensor": tensor}


def spans(text: str):
    """(line number, [backtick spans]) for every line outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield n, re.findall(r"`([^`]+)`", line)


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def resolve_dotted(name: str, instances) -> bool | None:
    """True/False when ``name``'s head is a minisr module, class or a known variable; None when it is not a name."""
    parts = name.split(".")
    if any(not re.fullmatch(IDENT, p) for p in parts):
        return None
    for prefix in MODULE_PREFIXES:
        for i in range(len(parts), 0, -1):
            mod = _module(prefix + ".".join(parts[:i]))
            if mod is not None:
                obj = mod
                for attr in parts[i:]:
                    if not hasattr(obj, attr):
                        return False
                    obj = getattr(obj, attr)
                return True
    import minisr

    head = instances.get(parts[0], getattr(minisr, parts[0], None))
    if head is None:
        return None
    obj = head
    for attr in parts[1:]:
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True


def _path_module(path: str) -> str | None:
    return path[:-3].replace("/", ".") if path.startswith("minisr/") and path.endswith(".py") else None


def check_names(text: str):
    """(checked names, problems) for the Markdown ``text``."""
    instances = _instances()
    searched = [importlib.import_module(m) for m in (
        "minisr", "minisr.tensor", "minisr.functional", "minisr.autograd", "minisr.nn", "minisr.backends",
        "minisr.backends.numpy_backend", "minisr.backends.numba", "minisr.backends.shifted_kernel")]
    searched += [importlib.import_module(f"minisr.backends.numba.{m.name}")  # (the Numba backend's files)
                 for m in pkgutil.iter_modules(importlib.import_module("minisr.backends.numba").__path__)]
    searched += [instances["x"], np]  # `backward()` is a Tensor method; the NumPy reference calls `matmul`
    checked, problems = [], []
    for n, line_spans in spans(text):
        module = None  # the module of the last file path on this line
        for raw in line_spans:
            span = raw.strip()
            if re.fullmatch(r"[\w./-]+\.(py|md|cu|png|toml|json|csv)", span):  # a file: a path, or a name in minisr/
                checked.append(span)
                found = (ROOT / span).is_file() if "/" in span else any(ROOT.glob(f"minisr/**/{span}"))
                if not found:
                    problems.append(f"line {n}: file {span} does not exist")
                module = _path_module(span)
                continue
            call = re.fullmatch(rf"({IDENT}(?:\.{IDENT})*)\(.*\)", span)
            name = call.group(1) if call else span
            if "." in name:
                ok = resolve_dotted(name, instances)
            elif re.fullmatch(IDENT, name) and module is not None:
                ok = hasattr(_module(module), name)
            elif re.fullmatch(IDENT, name) and call and name not in LOCAL_CALLS:
                ok = any(hasattr(m, name) for m in searched)
            else:
                ok = None
            if ok is None:
                continue
            checked.append(name)
            if not ok:
                problems.append(f"line {n}: `{span}` names {name}, which does not exist"
                                + (f" in {module}" if module and "." not in name else ""))
    return checked, problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_code_name_in_the_doc_exists(doc):
    checked, problems = check_names(doc.read_text(encoding="utf-8"))
    assert len(checked) > 50, f"only {len(checked)} names found: is the parser still reading {doc.name}?"
    assert not problems, "\n".join(problems)


def test_the_check_fails_when_a_name_is_removed(monkeypatch):
    """Removing a function that the doc names, or naming a file that is not there, is reported."""
    from minisr.backends import numpy_backend, shifted_kernel

    text = DOCS[0].read_text(encoding="utf-8")
    assert "`numpy_backend.im2col`" in text and "`shifted_kernel.shifted_gemm`" in text
    monkeypatch.delattr(numpy_backend, "im2col")
    monkeypatch.delattr(shifted_kernel, "gemm_nt")
    _, problems = check_names(text)
    assert any("numpy_backend.im2col" in p for p in problems)
    assert any("gemm_nt" in p for p in problems)  # a bare name after `minisr/backends/shifted_kernel.py`
    _, problems = check_names("see `minisr/no_such_file.py` and `functional.no_such_op` and `no_such_call(x)`")
    assert len(problems) == 3


def test_the_trace_example_runs_and_prints_the_doc_s_numbers(tmp_path, monkeypatch, capsys):
    """The ```python block of backprop.md section 9 runs as written, and the gradient norms its table shows are the
    ones it computes."""
    text = DOCS[0].read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = next(b for b in blocks if "autograd.trace()" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "backprop.md", "exec"), scope)  # noqa: S102 - the doc's own example
    table = text[text.index("`t.table()`, one row per op"):]
    table = table[:table.index("```", table.index("```") + 3)]
    for rec in scope["t"].records:
        assert f"{rec.grad_norm:.4g}" in table
        if rec.param_grad_norm is not None:
            assert f"{rec.param_grad_norm:.4g}" in table
        if rec.layer is not None:
            assert rec.layer in ("0", "2")
    assert (tmp_path / "grads.png").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_and_image_exists(doc):
    """Markdown links and images to files of the repository (not URLs or anchors) point at files that exist."""
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8"))
    missing = [t for t in targets if not re.match(r"[a-z]+:|#", t) and not (doc.parent / t.split("#")[0]).exists()]
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"
