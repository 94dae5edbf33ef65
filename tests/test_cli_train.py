"""``fastbp train``: the result line, defaults, outputs, and one-line errors."""

import json
import os
import re
import subprocess
import sys

import numpy
import pytest
from conftest import BACKENDS

import fastbp.nets
from fastbp.cli import main
from fastbp.nets import MultiLayerNet
from fastbp.train import load_params

RESULT = re.compile(r"^train acc (\d\.\d{4})  test acc (\d\.\d{4})  (\S+) s/epoch$")


def result_line(out):
    last = out.strip().splitlines()[-1]
    match = RESULT.match(last)
    assert match, f"last line is not the result: {last!r}"
    train_acc, test_acc, seconds = map(float, match.groups())
    assert 0 <= train_acc <= 1 and 0 <= test_acc <= 1 and seconds > 0
    return train_acc, test_acc


@pytest.mark.parametrize("name", BACKENDS)
def test_quiet_run_prints_only_the_result_line(name, capsys):
    assert main(["train", "--epochs", "2", "--quiet", "--backend", name]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 and err == ""
    result_line(out)


def test_defaults_train_digits_to_097(capsys):
    assert main(["train"]) == 0
    out = capsys.readouterr().out
    assert "on digits" in out and "adam lr 0.001, batch 32, 40 epochs" in out
    _, test_acc = result_line(out)
    assert test_acc >= 0.97


def test_toy_float32_sigmoid(capsys):
    argv = ["train", "--dataset", "toy", "--dtype", "float32", "--activation", "sigmoid",
            "--hidden", "8", "--lr", "0.5", "--epochs", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2-8-2 sigmoid net on toy" in out and "float32" in out
    assert result_line(out)[1] > 0.6


def test_save_and_plot_write_their_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ckpt, png = tmp_path / "digits.ckpt", tmp_path / "curves.png"
    argv = ["train", "--epochs", "3", "--hidden", "16", "--weight-decay", "1e-4",
            "--save", str(ckpt), "--plot", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert str(ckpt) in out and str(png) in out
    result_line(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with numpy.load(ckpt) as archive:  # the net was built as the flags say
        config = json.loads(str(archive["config"]))
    assert config["weight_decay_lambda"] == 1e-4 and config["hidden_size_list"] == [16]
    net = MultiLayerNet(64, [16], 10, weight_decay_lambda=1e-4, seed=5)
    load_params(net, ckpt)
    from fastbp.data import load_dataset

    _, (x_test, t_test) = load_dataset("digits")
    _, test_acc = result_line(out)
    assert net.accuracy(x_test, t_test) == pytest.approx(test_acc, abs=1e-4)


def test_mnist_from_a_data_dir(tmp_path, capsys):
    rng = numpy.random.default_rng(0)
    numpy.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 256, (40, 28, 28), numpy.uint8),
                y_train=rng.integers(0, 10, 40), x_test=rng.integers(0, 256, (10, 28, 28), numpy.uint8),
                y_test=rng.integers(0, 10, 10))
    argv = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--hidden", "10",
            "--epochs", "1", "--batch-size", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "784-10-10" in out and "(40 train, 10 test)" in out
    result_line(out)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop"])
def test_other_optimizers_by_name(optimizer, capsys):
    from fastbp.cli.train import OPTIMIZERS

    assert main(["train", "--optimizer", optimizer, "--epochs", "2", "--hidden", "32"]) == 0
    out = capsys.readouterr().out
    assert f"{optimizer} lr {OPTIMIZERS[optimizer][1]:g}" in out
    result_line(out)


def test_dropout_and_batchnorm_reach_the_net(monkeypatch, capsys):
    seen = {}

    class Spy(MultiLayerNet):
        def __init__(self, *args, use_dropout=False, dropout_ratio=0.5, use_batchnorm=False, **kw):
            seen.update(use_dropout=use_dropout, dropout_ratio=dropout_ratio,
                        use_batchnorm=use_batchnorm)
            super().__init__(*args, **kw)

    monkeypatch.setattr(fastbp.nets, "MultiLayerNet", Spy)
    assert main(["train", "--epochs", "1", "--dropout", "0.25", "--batchnorm", "--quiet"]) == 0
    assert seen == {"use_dropout": True, "dropout_ratio": 0.25, "use_batchnorm": True}
    result_line(capsys.readouterr().out)


def test_plain_run_uses_he_init_and_no_extras(monkeypatch, capsys):
    received = {}

    class Spy(MultiLayerNet):
        def __init__(self, *args, **kwargs):
            received.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(fastbp.nets, "MultiLayerNet", Spy)
    assert main(["train", "--epochs", "1", "--quiet"]) == 0
    assert received["weight_init_std"] == "he"
    assert not received["use_dropout"] and not received["use_batchnorm"]


@pytest.mark.parametrize("argv, fragment", [
    (["--epochs", "-1"], "argument --epochs: must be a positive integer, received -1"),
    (["--epochs", "0"], "argument --epochs: must be a positive integer, received 0"),
    (["--batch-size", "0"], "argument --batch-size: must be a positive integer, received 0"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, received 0"),
    (["--lr", "-0.1"], "argument --lr: must be a finite number > 0, received -0.1"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, received inf"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, received -1"),
    (["--backend", "tpu"], "argument --backend: invalid choice: 'tpu'"),
    (["--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
    (["--dropout", "1.5"], "argument --dropout: must lie in [0, 1), received 1.5"),
    (["--dropout", "1"], "argument --dropout: must lie in [0, 1), received 1"),
    (["--weight-decay", "-1"], "argument --weight-decay: must be a finite number >= 0, received -1"),
    (["--hidden", "0"], "argument --hidden: must be a positive integer, received 0"),
])
def test_bad_arguments_exit_2_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert fragment in err and err.count("\n") == 1 and out == ""


def test_plot_writes_the_format_its_suffix_names(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pdf = tmp_path / "curves.pdf"
    assert main(["train", "--epochs", "1", "--hidden", "8", "--quiet", "--plot", str(pdf)]) == 0
    assert pdf.read_bytes()[:5] == b"%PDF-"
    bare = tmp_path / "curves"  # no suffix: PNG, under exactly this name
    assert main(["train", "--epochs", "1", "--hidden", "8", "--quiet", "--plot", str(bare)]) == 0
    assert bare.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["train", "--plot", str(tmp_path / "curves.xyz")]) == 2  # before training
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib writes no .xyz files; use one of" in err
    assert sorted(os.listdir(tmp_path)) == ["curves", "curves.pdf"]


def test_runtime_errors_are_one_line_too(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-images-idx3-ubyte.gz" in err and "--download" in err
    assert main(["train", "--save", str(tmp_path / "no" / "such" / "dir" / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--save" in err and "does not exist" in err
    assert main(["train", "--save", str(tmp_path)]) == 2  # refused before training, not after
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--save" in err and "is a directory" in err


def test_no_traceback_from_the_real_command():
    result = subprocess.run([sys.executable, "-m", "fastbp", "train", "--epochs", "-3"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "fastbp train: error: argument --epochs: must be a positive integer, received -3"]
