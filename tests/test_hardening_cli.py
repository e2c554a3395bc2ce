"""minisr/cli_checks.py: every numeric option of every CLI is validated at parse time, in one place; the checkers'
ranges and messages; the exit code and the one-line message (no traceback) from a real process."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from minisr import cli_checks as C

PARSERS = {
    "train": lambda: __import__("minisr.train").train.build_parser(),
    "train srgan": lambda: __import__("minisr.gan").gan.build_parser(),
    "eval": lambda: __import__("minisr.eval").eval.build_parser(),
    "upscale": lambda: __import__("minisr.upscale").upscale.build_parser(),
    "prs": lambda: __import__("minisr.prs").prs.build_parser(),
    "serve": lambda: __import__("minisr.serve.__main__").serve.__main__.build_parser(),
    "crops": lambda: __import__("minisr.crops").crops.build_parser(),
}


@pytest.mark.parametrize("cli", sorted(PARSERS))
def test_every_numeric_option_has_a_checker(cli):
    """A new option with type=int or float (or the old tuple-of-ints parser) must get an entry in cli_checks, unless
    argparse's ``choices`` lists its values."""
    parser = PARSERS[cli]()
    raw = [a.option_strings[0] for a in parser._actions
           if (a.type in (int, float) and not a.choices) or getattr(a.type, "__name__", "") == "_ints"]
    assert not raw, f"minisr.{cli}: {raw} are not validated; give them a checker in minisr/cli_checks.py"
    assert parser.error.__func__ is C.Parser.error  # one error format


@pytest.mark.parametrize("check,good,bad", [
    (C.positive_int, [("1", 1), (" 7 ", 7)], ["0", "-1", "1.5", "x", ""]),
    (C.nonneg_int, [("0", 0)], ["-1"]),
    (C.int_range(2, 4), [("2", 2), ("4", 4)], ["1", "5"]),
    (C.positive_float, [("1e-3", 1e-3)], ["0", "-1", "nan", "inf", "-inf", "x"]),
    (C.fraction, [("0", 0.0), ("1", 1.0), ("0.5", 0.5)], ["-0.1", "1.01", "nan"]),
    (C.open_fraction, [("0.2", 0.2)], ["0", "1"]),
    (C.seed, [("0", 0), (str(2 ** 32 - 1), 2 ** 32 - 1)], ["-1", str(2 ** 32)]),
    (C.memory_size, [("2G", 2 * 2 ** 30), ("500M", 500 * 2 ** 20), ("1.5GiB", 3 * 2 ** 29), ("1m", 2 ** 20),
                     ("2097152", 2 ** 21)], ["lots", "-1G", "100K", "0", "1X", "G"]),
    (C.int_list(2, 4), [("2,3,4", (2, 3, 4)), ("2x3", (2, 3))], ["2,5", "", ",", "a,b"]),
    (C.int_list(1, length=3), [("56,12,4", (56, 12, 4))], ["56,12", "1,2,3,4"]),
    (C.device, [("cpu", "cpu"), ("CUDA", "cuda"), ("cuda:1", "cuda:1")], ["gpu", "cuda:", "tpu"]),
])
def test_checkers(check, good, bad):
    for text, value in good:
        assert check(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError) as info:
            check(text)
        assert repr(text) in str(info.value) and "not allowed" in str(info.value)


def test_a_renamed_option_cannot_lose_its_check():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int)
    with pytest.raises(KeyError, match="epoch"):
        C.validated(p, {"epoch": C.positive_int})


def test_train_combinations_name_the_options(capsys):
    from minisr import train

    for argv, words in [(["vdsr", "--n-resblocks", "2"], ["--n-resblocks", "vdsr", "edsr"]),
                        (["srcnn", "--dsm", "1,2,3"], ["--dsm", "fsrcnn"]),
                        (["edsr", "--channels", "1"], ["--channels", "srcnn"]),
                        (["srcnn", "--schedule", "step", "--min-lr", "0.1"], ["--min-lr 0.1", "cosine"]),
                        (["srcnn", "--stride", "10", "--patches-per-image", "4"], ["--stride 10", "give one"]),
                        ([], ["the model is required"])]:
        with pytest.raises(SystemExit) as stop:
            train.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert all(w in err for w in words), err


@pytest.mark.parametrize("module,argv,words", [
    ("minisr.train", ["srcnn", "--epochs", "-3"], ["--epochs", "'-3'", ">= 1"]),
    ("minisr.upscale", ["a.png", "-o", "b.png", "--model", "bicubic", "--max-memory", "12Q"], ["--max-memory"]),
])
def test_a_real_process_exits_2_with_one_line(module, argv, words, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error: ")
    assert all(w in r.stderr for w in words), r.stderr
    assert not list(tmp_path.iterdir())  # nothing written
