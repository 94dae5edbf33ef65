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


@pytest.mark.parametrize("name", BACKENDS)
def test_gradcheck_in_float32_passes_against_a_float64_copy(name, capsys):
    assert main(["gradcheck", "--backend", name, "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and "of a float64 copy" in out and "(tolerance 0.0001)" in out


def test_gradcheck_in_float32_fails_on_a_wrong_backward(monkeypatch, capsys):
    from fastbp.backends import get_backend

    monkeypatch.setattr(get_backend("numpy"), "activation_backward_bias",  # ignores the ReLU mask
                        lambda d, a, activation: (d, d.sum(axis=0)))
    assert main(["gradcheck", "--backend", "numpy", "--dtype", "float32"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_gradcheck_deeper_sigmoid_net(capsys):
    assert main(["gradcheck", "--hidden", "6", "5", "--activation", "sigmoid"]) == 0
    assert "W3" in capsys.readouterr().out


def test_info_lists_every_backend_and_blas(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("numpy", "numba", "cupy"):
        assert name in out
    assert "blas:" in out and "cpu:" in out and "mpi:" in out


def test_cpu_info_tells_apart_generations_a_vm_names_alike(monkeypatch):
    import io

    from fastbp import sysinfo

    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
            "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f\n")
    monkeypatch.setattr(sysinfo, "open", lambda *args, **kwargs: io.StringIO(text), raising=False)
    cpu = sysinfo.cpu_info()
    assert (cpu["model"], cpu["family"], cpu["model_number"], cpu["simd"]) == \
        ("AMD EPYC", 26, 2, "AVX-512")
    monkeypatch.setattr(sysinfo, "open", lambda *args, **kwargs: io.StringIO("flags : sse2\n"),
                        raising=False)
    assert (sysinfo.cpu_info()["family"], sysinfo.cpu_info()["model_number"]) == (None, None)


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


@pytest.mark.parametrize("flag, where", [("--json", "folder"), ("--json", "under-file"),
                                         ("--plot", "under-file")])
def test_bench_refuses_unwritable_outputs_before_measuring(tmp_path, monkeypatch, capsys,
                                                           flag, where):
    import fastbp.benchmarks.kernels

    monkeypatch.setattr(fastbp.benchmarks.kernels, "run",
                        lambda settings: pytest.fail("measured before refusing the output"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = tmp_path if where == "folder" else blocker / "out.json"
    assert main(["bench", "--suite", "kernels", "--quick", "--backend", "numpy",
                 flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastbp bench: error: " + flag) and len(err.splitlines()) == 1


def test_bench_plot_without_matplotlib_is_refused_before_measuring(tmp_path, monkeypatch,
                                                                  capsys):
    import fastbp.benchmarks.kernels

    monkeypatch.setattr(fastbp.benchmarks.kernels, "run",
                        lambda settings: pytest.fail("measured before refusing --plot"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["bench", "--suite", "kernels", "--quick", "--backend", "numpy",
                 "--plot", str(tmp_path / "plots")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()


def test_out_of_memory_is_one_line(capsys):
    assert main(["gradcheck", "--batch", str(10 ** 12)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastbp gradcheck: error: out of memory") and len(err.splitlines()) == 1
