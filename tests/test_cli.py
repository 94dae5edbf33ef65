import json
import subprocess
import sys

import pytest
from conftest import BACKENDS

from fastbp.cli import main


@pytest.mark.parametrize("name", BACKENDS)
def test_gradcheck_passes_on_a_seeded_net(name, capsys):
    assert main(["gradcheck", "--backend", name]) == 0
    out = capsys.readouterr().out
    assert f"backend {name}" in out and "PASS" in out
    for key in ("W1", "b1", "W2", "b2"):
        assert key in out


def test_gradcheck_fails_above_tolerance(capsys):
    assert main(["gradcheck", "--tol", "1e-300"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_gradcheck_prints_the_tolerance_it_was_given(capsys):
    """Rounded, a tolerance below the worst error could print above it."""
    main(["gradcheck", "--tol", "1.6e-9"])
    assert "(tolerance 1.6e-09)" in capsys.readouterr().out


def test_gradcheck_fails_when_only_the_directional_check_does(monkeypatch, capsys):
    import fastbp.gradcheck

    monkeypatch.setattr(fastbp.gradcheck, "directional_check", lambda *args, **kwargs: [1.0])
    assert main(["gradcheck"]) == 1
    assert "FAIL: worst 1.000e+00" in capsys.readouterr().out


def test_gradcheck_deeper_sigmoid_net(capsys):
    assert main(["gradcheck", "--hidden", "6", "5", "--activation", "sigmoid"]) == 0
    assert "W3" in capsys.readouterr().out


def test_info_lists_every_backend_and_blas(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("numpy", "numba", "cupy"):
        assert name in out
    assert "blas:" in out and "cpu:" in out and "mpi:" in out


def test_info_json():
    out = subprocess.run([sys.executable, "-m", "fastbp", "info", "--json"], capture_output=True,
                         text=True, check=True).stdout
    info = json.loads(out)
    assert info["backends"]["numpy"]["available"] is True
    assert info["cpu"]["cores"] >= 1 and info["blas"]
    assert isinstance(info["mpi"]["available"], bool)


@pytest.mark.parametrize("argv, fragment", [
    (["gradcheck", "--backend", "tpu"], "argument --backend: invalid choice: 'tpu'"),
    (["gradcheck", "--batch", "0"], "argument --batch: must be a positive integer, received 0"),
    (["gradcheck", "--tol", "-1"], "argument --tol: must be a finite number > 0"),
])
def test_bad_arguments_give_one_line(argv, fragment):
    result = subprocess.run([sys.executable, "-m", "fastbp", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
