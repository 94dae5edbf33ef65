"""fastbp.train: the Trainer loop and checkpoints, on every available backend."""

import os
import stat
import zipfile

import numpy
import pytest
from conftest import host

import fastbp
import fastbp.train as train
from fastbp.atomic import replacing
from fastbp.data import load_dataset
from fastbp.nets import MultiLayerNet, TwoLayerNet
from fastbp.optim import SGD, Adam
from fastbp.train import CheckpointError, Trainer, load_params, save_params


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_net(backend, seed=0, hidden=(6, 5), dtype="float64"):
    return MultiLayerNet(4, list(hidden), 3, seed=seed, backend=backend, dtype=dtype)


def snapshot(net):
    return {key: host(value).copy() for key, value in {**net.params, **net.buffers}.items()}


def assert_unchanged(net, before):
    after = snapshot(net)
    assert after.keys() == before.keys()
    for key in before:
        numpy.testing.assert_array_equal(after[key], before[key], err_msg=key)


# ---------------------------------------------------------------- Trainer
def test_every_sample_once_per_epoch_with_the_last_partial_batch(backend):
    n, batch = 23, 5
    x = numpy.zeros((n, 4))
    x[:, 0] = numpy.arange(n)  # column 0 names the sample
    t = numpy.arange(n) % 3
    net = small_net(backend)
    seen = []

    def spy(xb, tb, optimizer, **checks):
        rows = host(xb)[:, 0].astype(int)
        numpy.testing.assert_array_equal(host(tb), t[rows])  # labels travel with their rows
        seen.append(rows)
        return backend.xp.asarray(1.0)

    net.train_step = spy
    history = Trainer(net, SGD(0.1), x, t, epochs=3, batch_size=batch, verbose=False).fit()
    assert [len(rows) for rows in seen] == [5, 5, 5, 5, 3] * 3
    epochs = [numpy.concatenate(seen[i * 5:(i + 1) * 5]) for i in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert not numpy.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    assert history["loss"] == [1.0] * 3


def test_history_has_one_entry_per_epoch(backend):
    (x, t), (xt, tt) = load_dataset("toy")
    net = MultiLayerNet(2, [8], 2, seed=0, backend=backend)
    history = Trainer(net, SGD(0.1), x, t, xt, tt, epochs=4, batch_size=64, verbose=False).fit()
    assert set(history) == {"loss", "train_acc", "test_acc", "epoch_time"}
    assert all(len(values) == 4 for values in history.values())
    assert all(isinstance(v, float) for values in history.values() for v in values)
    no_test = Trainer(net, SGD(0.1), x, t, epochs=2, verbose=False).fit()
    assert len(no_test["train_acc"]) == 2 and no_test["test_acc"] == []


def test_seeded_runs_repeat(backend):
    (x, t), (xt, tt) = load_dataset("toy")

    def run(seed):
        net = MultiLayerNet(2, [8, 8], 2, seed=0, backend=backend)
        history = Trainer(net, SGD(0.1), x, t, xt, tt, epochs=3, batch_size=16, seed=seed,
                          verbose=False).fit()
        return history, snapshot(net)

    (h1, p1), (h2, p2), (h3, _) = run(0), run(0), run(1)
    for key in ("loss", "train_acc", "test_acc"):
        if backend.gpu:  # GPU reductions may reorder sums between runs
            numpy.testing.assert_allclose(h1[key], h2[key], rtol=1e-12)
        else:
            assert h1[key] == h2[key]
    for key in p1:
        if backend.gpu:
            numpy.testing.assert_allclose(p1[key], p2[key], rtol=1e-12)
        else:
            numpy.testing.assert_array_equal(p1[key], p2[key])
    assert h3["loss"] != h1["loss"]  # the seed does pick the batches


def test_digits_two_layer_net_with_sgd_reaches_095(backend, digits):
    (x, t), (xt, tt) = digits
    net = TwoLayerNet(64, 100, 10, weight_init_std="he", seed=0, backend=backend)
    history = Trainer(net, SGD(0.1), x, t, xt, tt, epochs=30, batch_size=32,
                      verbose=False).fit()
    assert history["test_acc"][-1] >= 0.95
    assert history["loss"][-1] < history["loss"][0]


def test_digits_deep_net_with_adam_and_he_init_reaches_097(backend, digits):
    (x, t), (xt, tt) = digits
    net = MultiLayerNet(64, [100, 100], 10, weight_init_std="he", seed=0, backend=backend)
    history = Trainer(net, Adam(0.001), x, t, xt, tt, epochs=40, batch_size=32,
                      verbose=False).fit()
    assert history["test_acc"][-1] >= 0.97


def test_float32_training_stays_float32(backend, digits):
    (x, t), _ = digits
    net = TwoLayerNet(64, 20, 10, weight_init_std="he", seed=0, backend=backend, dtype="float32")
    trainer = Trainer(net, SGD(0.1), x[:100], t[:100], epochs=1, batch_size=50, verbose=False)
    assert trainer.x_train.dtype == numpy.float32
    trainer.fit()
    assert all(p.dtype == numpy.float32 for p in net.params.values())


def test_one_hot_labels_train_too(backend):
    (x, t), _ = load_dataset("toy", one_hot=True)
    net = MultiLayerNet(2, [8], 2, seed=0, backend=backend)
    history = Trainer(net, SGD(0.1), x, t, epochs=2, batch_size=50, verbose=False).fit()
    assert history["train_acc"][-1] > 0.6


def test_eval_sample_limits_the_evaluation(backend):
    (x, t), _ = load_dataset("toy")
    net = MultiLayerNet(2, [8], 2, seed=0, backend=backend)
    calls = []
    accuracy = net.accuracy
    net.accuracy = lambda xs, ts: calls.append(len(xs)) or accuracy(xs, ts)
    Trainer(net, SGD(0.1), x, t, x, t, epochs=2, eval_sample=30, verbose=False).fit()
    assert calls == [30, 30, 30, 30]


def test_quiet_trainer_prints_nothing(backend, capsys):
    (x, t), _ = load_dataset("toy")
    net = MultiLayerNet(2, [8], 2, seed=0, backend=backend)
    Trainer(net, SGD(0.1), x, t, epochs=2, verbose=False).fit()
    assert capsys.readouterr() == ("", "")


def test_bar_only_on_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    import sys

    class Terminal:
        written = []

        @staticmethod
        def isatty():
            return True

        @classmethod
        def write(cls, text):
            cls.written.append(text)

        @staticmethod
        def flush():
            pass

    assert train._progress_bar(10, verbose=True) is None  # pytest captures stderr: not a tty
    monkeypatch.setattr(sys, "stderr", Terminal)
    assert train._progress_bar(10, verbose=False) is None
    bar = train._progress_bar(10, verbose=True)
    bar.update(10)
    bar.close()
    assert "10/10" in "".join(Terminal.written)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed: no bar, no error
    assert train._progress_bar(10, verbose=True) is None


@pytest.mark.parametrize("kwargs, fragment", [
    ({"epochs": 0}, "epochs must be an integer >= 1, received 0"),
    ({"epochs": 2.5}, "epochs must be an integer >= 1, received 2.5"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, received 0"),
    ({"batch_size": True}, "batch_size must be an integer >= 1, received True"),
    ({"eval_sample": -3}, "eval_sample must be an integer >= 1"),
    ({"seed": -1}, "seed must be None, an integer >= 0 or anything else numpy.random.default_rng "
                   "takes, received -1"),
    ({"t_train": numpy.zeros(9, dtype=int)}, "x_train and t_train .* received 10 and 9"),
    ({"t_train": numpy.zeros(10)}, "t_train must hold integer class indices"),
    ({"x_test": numpy.zeros((3, 4))}, "both x_test and t_test"),
    ({"x_train": numpy.array([[0.0, 1, 2, numpy.nan]] * 10)},
     "Trainer: x_train holds NaN or inf; remove or replace those samples"),
    ({"x_test": numpy.full((3, 4), numpy.inf), "t_test": numpy.zeros(3, dtype=int)},
     "Trainer: x_test holds NaN or inf"),
    ({"t_train": numpy.full((10, 3), -numpy.inf)}, "Trainer: t_train holds NaN or inf"),
])
def test_bad_arguments_are_named(backend, kwargs, fragment):
    args = {"x_train": numpy.zeros((10, 4)), "t_train": numpy.zeros(10, dtype=int), **kwargs}
    with pytest.raises(ValueError, match=fragment):
        Trainer(small_net(backend), SGD(0.1), **args)


# ------------------------------------------------------------ checkpoints
def trained_net(backend, **kwargs):
    net = small_net(backend, **kwargs)
    rng = numpy.random.default_rng(0)
    Trainer(net, SGD(0.5), rng.standard_normal((30, 4)), rng.integers(0, 3, 30), epochs=2,
            batch_size=7, verbose=False).fit()
    return net


def test_round_trip_across_backends_in_place(backend, tmp_path):
    source = trained_net(backend)
    path = tmp_path / "net.npz"
    save_params(source, path)
    for dtype in ("float64", "float32"):
        target = small_net("numpy", seed=99, dtype=dtype)
        shared = target.layers["Affine1"].W
        load_params(target, path)
        assert target.layers["Affine1"].W is shared  # in place: the layers see the new values
        for key, value in source.params.items():
            assert target.params[key].dtype == numpy.dtype(dtype)
            numpy.testing.assert_allclose(host(target.params[key]), host(value),
                                          rtol=1e-6 if dtype == "float32" else 0)
    back = small_net(backend, seed=5)
    load_params(back, path)
    x = numpy.random.default_rng(1).standard_normal((5, 4))
    numpy.testing.assert_array_equal(host(back.predict(x)), host(source.predict(x)))


def test_public_names_are_the_checkpoint_functions(tmp_path):
    assert (fastbp.save_params, fastbp.load_params) == (save_params, load_params)
    net, other = small_net("numpy"), small_net("numpy", seed=3)
    fastbp.save_params(net, tmp_path / "a.npz")
    fastbp.load_params(other, tmp_path / "a.npz")
    for key, value in net.params.items():
        numpy.testing.assert_array_equal(other.params[key], value)


def test_buffers_are_saved_and_restored_in_place(backend, tmp_path):
    source = MultiLayerNet(4, [6, 5], 3, use_batchnorm=True, seed=0, backend=backend)
    values = numpy.random.default_rng(0).standard_normal(6)  # not exact in float32
    source.buffers["running_mean1"] = values  # copied into the net's own array
    save_params(source, tmp_path / "b.npz")
    target = MultiLayerNet(4, [6, 5], 3, use_batchnorm=True, seed=1)
    buffer = target.buffers["running_mean1"]
    load_params(target, tmp_path / "b.npz")
    assert target.buffers["running_mean1"] is buffer
    numpy.testing.assert_array_equal(buffer, values)  # bit for bit
    plain = small_net("numpy", seed=1)  # a net without those buffers refuses the file
    before = snapshot(plain)
    with pytest.raises(CheckpointError, match="use_batchnorm is True in the file"):
        load_params(plain, tmp_path / "b.npz")
    assert_unchanged(plain, before)


def test_the_exact_path_is_written(tmp_path):
    path = tmp_path / "weights.ckpt"
    save_params(small_net("numpy"), path)
    assert sorted(os.listdir(tmp_path)) == ["weights.ckpt"]  # no .npz appended, no temp left
    load_params(small_net("numpy", seed=1), path)


@pytest.mark.parametrize("other, key", [
    ({"hidden": (6, 4)}, "hidden_size_list"),
    ({"hidden": (6,)}, "hidden_size_list"),
])
def test_another_architecture_is_refused_and_nothing_changes(backend, tmp_path, other, key):
    save_params(small_net(backend), tmp_path / "c.npz")
    net = small_net(backend, seed=1, **other)
    before = snapshot(net)
    with pytest.raises(ValueError, match=key) as info:
        load_params(net, tmp_path / "c.npz")
    assert "[6, 5]" in str(info.value) and str(list(other["hidden"])) in str(info.value)
    assert_unchanged(net, before)
    wide = MultiLayerNet(4, [6, 5], 3, activation="sigmoid", seed=1, backend=backend)
    with pytest.raises(ValueError, match="activation"):
        load_params(wide, tmp_path / "c.npz")


def test_a_bad_array_late_in_the_file_changes_nothing(tmp_path):
    """W1 is fine and W2 is not: W1 must not be assigned before W2 is checked."""
    net = small_net("numpy")
    save_params(net, tmp_path / "good.npz")
    with numpy.load(tmp_path / "good.npz") as archive:
        entries = dict(archive)
    entries["param/W1"] = entries["param/W1"] + 1
    entries["param/W2"] = numpy.zeros((5, 6))
    numpy.savez(tmp_path / "bad.npz", **entries)
    target = small_net("numpy", seed=2)
    before = snapshot(target)
    with pytest.raises(CheckpointError, match=r"param/W2 .* shape \(6, 5\)"):
        load_params(target, tmp_path / "bad.npz")
    assert_unchanged(target, before)


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf])
def test_a_checkpoint_holding_nan_or_inf_is_refused_and_nothing_changes(tmp_path, bad):
    save_params(small_net("numpy"), tmp_path / "good.npz")
    with numpy.load(tmp_path / "good.npz") as archive:
        entries = {key: archive[key] for key in archive.files}
    entries["param/b2"] = entries["param/b2"] + bad
    numpy.savez(tmp_path / "bad.npz", **entries)
    target = small_net("numpy", seed=2)
    before = snapshot(target)
    with pytest.raises(CheckpointError, match="param/b2 holds NaN or inf in float64; nothing was loaded"):
        load_params(target, tmp_path / "bad.npz")
    assert_unchanged(target, before)


def test_a_value_that_overflows_the_nets_dtype_is_refused(tmp_path):
    wide = small_net("numpy")
    wide.params["W1"][0, 0] = 1e300
    save_params(wide, tmp_path / "wide.npz")
    narrow = small_net("numpy", seed=2, dtype="float32")
    before = snapshot(narrow)
    with pytest.raises(CheckpointError, match="param/W1 holds NaN or inf in float32"):
        load_params(narrow, tmp_path / "wide.npz")
    assert_unchanged(narrow, before)


def test_training_settings_need_not_match_to_load(backend, tmp_path):
    """A net trained with dropout and weight decay loads into one without, for evaluation."""
    trained = MultiLayerNet(4, [6, 5], 3, use_dropout=True, dropout_ratio=0.3,
                            weight_decay_lambda=0.1, use_batchnorm=True, batchnorm_momentum=0.5,
                            seed=0, backend=backend)
    save_params(trained, tmp_path / "t.npz")
    plain = MultiLayerNet(4, [6, 5], 3, use_batchnorm=True, seed=1, backend=backend)
    load_params(plain, tmp_path / "t.npz")
    assert_unchanged(plain, snapshot(trained))
    other_eps = MultiLayerNet(4, [6, 5], 3, use_batchnorm=True, batchnorm_eps=1e-3, seed=1,
                              backend=backend)
    with pytest.raises(CheckpointError, match="batchnorm_eps is 1e-06 in the file"):
        load_params(other_eps, tmp_path / "t.npz")
    save_params(small_net(backend), tmp_path / "plain.npz")  # eps is unused without BatchNorm
    load_params(MultiLayerNet(4, [6, 5], 3, batchnorm_eps=1e-3, backend=backend), tmp_path / "plain.npz")


def flip_byte(raw, at):
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]


@pytest.mark.parametrize("damage", [
    lambda raw: raw[: len(raw) // 2],  # truncated
    lambda raw: raw[:40],
    lambda raw: flip_byte(raw, len(raw) // 3),  # a flipped byte: the zip CRC catches it
    lambda raw: b"not a checkpoint at all",
    lambda raw: b"",
])
def test_damaged_files_are_refused_and_nothing_changes(backend, tmp_path, damage):
    path = tmp_path / "d.npz"
    save_params(trained_net(backend), path)
    path.write_bytes(damage(path.read_bytes()))
    net = small_net(backend, seed=3)
    before = snapshot(net)
    with pytest.raises(CheckpointError) as info:
        load_params(net, path)
    assert str(path) in str(info.value)
    assert_unchanged(net, before)


def test_npz_that_is_not_a_checkpoint_is_refused(tmp_path):
    numpy.savez(tmp_path / "other.npz", W1=numpy.zeros((4, 6)))
    with pytest.raises(CheckpointError, match="not a fastbp checkpoint"):
        load_params(small_net("numpy"), tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_params(small_net("numpy"), tmp_path / "missing.npz")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "keep.npz"
    good = trained_net("numpy")
    save_params(good, path)
    original = path.read_bytes()
    real_savez = numpy.savez

    def crash_midway(file, **arrays):
        real_savez(file, **arrays)
        file.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(train.numpy, "savez", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_params(small_net("numpy", seed=7), path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["keep.npz"]
    restored = small_net("numpy", seed=8)
    load_params(restored, path)
    numpy.testing.assert_array_equal(restored.params["W1"], good.params["W1"])


def test_a_checkpoint_gets_the_permissions_a_plain_write_would(tmp_path):
    """New files follow the umask; a replaced file keeps its own mode."""
    net, fresh, kept = small_net("numpy"), tmp_path / "fresh.npz", tmp_path / "kept.npz"
    previous = os.umask(0o027)
    try:
        save_params(net, fresh)
        kept.write_bytes(b"old")
        os.chmod(kept, 0o604)
        save_params(net, kept)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
    assert stat.S_IMODE(kept.stat().st_mode) == 0o604


def test_a_replacement_is_never_readable_by_more_than_the_file_it_replaces(tmp_path):
    private = tmp_path / "private.npz"
    private.write_bytes(b"old")
    os.chmod(private, 0o600)
    with replacing(private) as (f, tmp):
        assert stat.S_IMODE(os.stat(tmp).st_mode) & ~0o600 == 0  # while the bytes go in
        f.write(b"new")
    assert private.read_bytes() == b"new" and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_checkpoint_saved_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    target, link = tmp_path / "runs" / "best.npz", tmp_path / "latest.npz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link.symlink_to(target)
    net = small_net("numpy", seed=3)
    save_params(net, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    restored = small_net("numpy", seed=4)
    load_params(restored, target)
    numpy.testing.assert_array_equal(restored.params["W1"], net.params["W1"])
    assert sorted(os.listdir(target.parent)) == ["best.npz"]


def test_the_rename_is_synced_to_disk_with_its_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real_fsync(fd)))
    with replacing(tmp_path / "a.bin") as (f, _):
        f.write(b"new")
    assert [stat.S_ISREG(synced[0]), stat.S_ISDIR(synced[-1])] == [True, True]


def test_an_unwritable_checkpoint_path_is_named_and_nothing_is_written(tmp_path):
    net = small_net("numpy")
    with pytest.raises(IsADirectoryError, match=f"is a directory, not a file to write: '{tmp_path}'"):
        save_params(net, tmp_path)
    missing = tmp_path / "no" / "x.npz"
    with pytest.raises(FileNotFoundError, match=f"no directory {missing.parent} to write into: "
                                                f"'{missing}'"):
        save_params(net, missing)
    assert os.listdir(tmp_path) == []


def test_checkpoint_holds_config_and_format(tmp_path):
    net = small_net("numpy")
    save_params(net, tmp_path / "e.npz")
    with zipfile.ZipFile(tmp_path / "e.npz") as archive:
        names = set(archive.namelist())
    assert {"config.npy", "format.npy", "param/W1.npy", "param/b3.npy"} <= names
    with numpy.load(tmp_path / "e.npz") as archive:
        assert archive["config"].dtype.kind == "U" and int(archive["format"]) == 1


@pytest.mark.parametrize("n, batch_size, sizes", [(21, 5, [5, 5, 5, 5, 1]), (20, 5, [5] * 4),
                                                   (3, 5, [3])])
def test_every_sample_is_seen_once_an_epoch_in_batches_of_batch_size(n, batch_size, sizes):
    """One process: a last batch of a single sample stays a batch of its own."""
    net, seen = small_net("numpy"), []
    step = net.train_step
    net.train_step = lambda x, t, optimizer, **checks: (seen.append(len(x)),
                                                        step(x, t, optimizer, **checks))[1]
    x, t = numpy.zeros((n, 4)), numpy.arange(n) % 3
    Trainer(net, SGD(0.1), x, t, epochs=1, batch_size=batch_size, verbose=False).fit()
    assert seen == sizes


def test_labels_are_checked_once_up_front(backend):
    """Steps skip the label check (a GPU sync), so the Trainer checks the whole set first."""
    x, t = numpy.zeros((6, 4)), numpy.array([0, 1, 2, 0, 1, 7])
    net = small_net(backend)
    with pytest.raises(ValueError, match=r"Trainer\(x_train, t_train\): labels must lie in \[0, 3\)"):
        Trainer(net, SGD(0.1), backend.asarray(x), backend.asarray(t), verbose=False)


@pytest.mark.parametrize("bad, fragment", [
    (lambda x: x.astype(complex), "expected real numbers in x_train"),
    (lambda x: numpy.float64(3.0), "x_train must be an array"),
])
def test_trainer_refuses_complex_or_scalar_x(digits, bad, fragment):
    (x, t), _ = digits
    with pytest.raises(ValueError, match=fragment):
        Trainer(MultiLayerNet(64, [20], 10, seed=0), SGD(0.1), bad(x), t, verbose=False)


def test_a_second_fit_trains_on_like_one_longer_fit(digits):
    (x, t), (xt, tt) = digits
    whole_net = MultiLayerNet(64, [20], 10, seed=0)
    whole = Trainer(whole_net, SGD(0.1), x, t, xt, tt, epochs=4, seed=0, verbose=False).fit()
    net = MultiLayerNet(64, [20], 10, seed=0)
    trainer = Trainer(net, SGD(0.1), x, t, xt, tt, epochs=2, seed=0, verbose=False)
    trainer.fit()
    halves = trainer.fit()
    assert halves["loss"] == whole["loss"] and halves["test_acc"] == whole["test_acc"]
    assert numpy.array_equal(host(net.params.flat), host(whole_net.params.flat))


def test_interrupted_evaluation_leaves_history_one_entry_per_finished_epoch(digits, monkeypatch):
    (x, t), (xt, tt) = digits
    net = MultiLayerNet(64, [20], 10, seed=0)
    trainer = Trainer(net, SGD(0.1), x, t, xt, tt, epochs=3, verbose=False)
    accuracy, calls = net.accuracy, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # epoch 2's test accuracy: Ctrl-C
            raise KeyboardInterrupt
        return accuracy(*args, **kwargs)

    monkeypatch.setattr(net, "accuracy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert {key: len(values) for key, values in trainer.history.items()} == {
        "loss": 1, "train_acc": 1, "test_acc": 1, "epoch_time": 1}


def test_fit_runs_the_users_gradient_hook_and_keeps_it(backend):
    net = TwoLayerNet(6, 5, 3, weight_init_std=0.5, seed=0, backend=backend)
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((20, 6)), rng.integers(0, 3, 20)
    seen = []

    def hook(grads):
        seen.append(float(abs(host(grads["W1"])).sum()))
    net.gradient_hook = hook
    Trainer(net, SGD(lr=0.1), x, t, epochs=2, batch_size=10, verbose=False).fit()
    assert len(seen) == 4 and all(s > 0 for s in seen)
    assert net.gradient_hook is hook


def test_fit_stops_on_batchnorm_statistics_that_overflowed(backend):
    """Finite inputs so large their variance is inf: the loss stays finite, running_var not."""
    net = MultiLayerNet(3, [4], 2, use_batchnorm=True, seed=0, backend=backend)
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((8, 3)) * 1e200, rng.integers(0, 2, 8)
    with numpy.errstate(all="ignore"), pytest.raises(
            FloatingPointError, match=r"after epoch 1 buffers\['running_var1'\] holds NaN or inf: "
                                      "the batches' statistics overflowed"):
        Trainer(net, SGD(lr=0.01), x, t, epochs=1, batch_size=4, verbose=False).fit()
