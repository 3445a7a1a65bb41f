"""`nitro data list | fetch`: status table, fetch through a stand-in torchvision, manual instructions."""

from __future__ import annotations

import os
import subprocess
import sys
import types
import urllib.error
from pathlib import Path

import pytest

from conftest import absolute_nitro_data, real_data_root
from nitro_cli.apps.data import main
from nitro_cli.data import DATASETS
from test_data import _contents, _small, _write_mnist

NAMES = "mnist_mini, mnist, fashion_mnist, cifar10"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich would fold long cells at 80 columns


def _fake_torchvision(monkeypatch, behaviour: str, calls: list) -> None:
    """Installs a stand-in `torchvision.datasets` whose MNIST writes small IDX files (or fails)."""

    class MNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            if behaviour == "offline":
                raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
            arrays = _write_mnist(Path(root), gz=False)
            if behaviour == "garbage":
                (Path(root) / "MNIST/raw/t10k-labels-idx1-ubyte").write_bytes(b"<html>")
            monkeypatch.setitem(DATASETS, "mnist", _small("mnist", {"train": 12, "test": 5},
                                                          _contents(arrays)))

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = MNIST
    tv = types.ModuleType("torchvision")
    tv.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_list_empty_root(tmp_path, capsys):
    assert main(["list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"data root: {tmp_path}  (--root)" in out
    for name in DATASETS:
        assert name in out
    assert out.count("missing") == 3 and "nitro data fetch fashion_mnist" in out
    assert "MNIST/raw/" in out and "cifar-10-batches-bin/" in out and "cifar-10-batches-py/" in out
    assert "verified" in out  # the embedded subset


@pytest.mark.parametrize("how", ["--root", "NITRO_DATA"])
def test_list_refuses_a_root_that_is_not_there(tmp_path, how):
    missing = tmp_path / "nonexistent"
    args, env = (["--root", str(missing)], {}) if how == "--root" else ([], {"NITRO_DATA": str(missing)})
    res = subprocess.run([sys.executable, "-m", "nitro_cli.apps.data", "list", *args], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(f"error: data root {missing} (") and res.stderr.count("\n") == 1


def test_list_states(tmp_path, capsys, monkeypatch):
    arrays = _write_mnist(tmp_path, gz=True)
    monkeypatch.setitem(DATASETS, "mnist", _small("mnist", {"train": 12, "test": 5}, _contents(arrays)))
    _write_mnist(tmp_path, gz=False, folder="FashionMNIST")  # real FashionMNIST MD5s: cannot match
    (tmp_path / "FashionMNIST/raw/t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("NITRO_DATA", str(tmp_path))
    assert main(["list"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("│ ")}
    assert "verified" in rows["mnist"]
    assert "corrupt" in rows["fashion_mnist"] and "wrong size" in rows["fashion_mnist"]
    assert "missing" in rows["cifar10"]
    assert main(["list", "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "($NITRO_DATA)" in out and "incomplete" in out and "t10k-labels-idx1-ubyte" in out
    assert "present" in out


def test_list_says_what_stands_where_a_file_belongs(tmp_path, capsys):
    """A FIFO where a dataset file belongs is no missing file (and is never opened: that would block)."""
    raw = tmp_path / "MNIST/raw"
    raw.mkdir(parents=True)
    os.mkfifo(raw / "train-images-idx3-ubyte")
    assert main(["list", "--root", str(tmp_path)]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("│ ")}
    assert "corrupt" in rows["mnist"] and "is a FIFO (named pipe), not a regular file" in rows["mnist"]


def test_list_real_datasets(capsys):
    import os

    if not os.environ.get("NITRO_DATA") or not Path(os.environ["NITRO_DATA"], "MNIST/raw").is_dir():
        pytest.skip("NITRO_DATA with MNIST/raw/ is not available")
    assert main(["list"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("│ ")}
    assert "verified" in rows["mnist"] and "checksums match" in rows["mnist"]


def test_fetch_unknown_name(capsys):
    assert main(["fetch", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: unknown dataset 'imagenet'; valid names: {NAMES}\n"


def test_fetch_embedded(capsys):
    assert main(["fetch", "mnist_mini"]) == 0
    assert "ships with the package" in capsys.readouterr().out


def test_fetch_without_torchvision(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    assert main(["fetch", "mnist", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "torchvision is not installed" in err and "nitro-cli[download]" in err
    assert f"{tmp_path}/MNIST/raw/" in err and "train-images-idx3-ubyte[.gz]" in err
    assert "6bbc9ace898e44ae57da46a324031adb" in err and "Traceback" not in err
    assert main(["fetch", "cifar10", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/cifar-10-batches-bin/" in err and "data_batch_5.bin" in err
    assert f"{tmp_path}/cifar-10-batches-py/" in err and "Both CIFAR-10 versions are read" in err


def test_fetch_through_torchvision(tmp_path, capsys, monkeypatch):
    calls: list = []
    _fake_torchvision(monkeypatch, "ok", calls)
    root = tmp_path / "new" / "root"
    assert main(["fetch", "mnist", "--root", str(root)]) == 0
    assert calls == [(str(root), True, True), (str(root), False, True)]
    out = capsys.readouterr().out
    assert "mnist is ready" in out and out.count(": ok") == 4
    # a second fetch finds it verified and downloads nothing
    assert main(["fetch", "mnist", "--root", str(root)]) == 0
    assert len(calls) == 2 and "already" in capsys.readouterr().out


def test_fetch_offline(tmp_path, capsys, monkeypatch):
    _fake_torchvision(monkeypatch, "offline", [])
    assert main(["fetch", "mnist", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "download of mnist failed (URLError" in err and f"{tmp_path}/MNIST/raw/" in err


def test_fetch_bad_download(tmp_path, capsys, monkeypatch):
    _fake_torchvision(monkeypatch, "garbage", [])
    assert main(["fetch", "mnist", "--root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "do not match the expected checksums" in captured.err
    assert "t10k-labels-idx1-ubyte" in captured.out and "wrong size" in captured.out


def test_fetch_root_not_creatable(tmp_path, capsys, monkeypatch):
    _fake_torchvision(monkeypatch, "ok", [])
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["fetch", "mnist", "--root", str(blocker / "sub")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot create the data root")


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["fetch"]) == 2
    assert "usage: nitro data" in capsys.readouterr().err


def test_console_script(tmp_path):
    nitro = Path(sys.executable).parent / "nitro"
    if not nitro.exists():
        pytest.skip("the nitro console script is not installed in this environment")
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(tmp_path)}
    done = subprocess.run([str(nitro), "data", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"data root: {tmp_path}/.cache/nitro/datasets  (default)" in done.stdout
    done = subprocess.run([str(nitro), "data", "fetch", "nope"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: unknown dataset 'nope'")


def test_the_tests_name_the_data_root_relative_to_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("NITRO_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"NITRO_DATA=\.\./shared/datasets ") as skipped:
        real_data_root("MNIST/raw/train-images-idx3-ubyte")
    assert "/work" not in str(skipped.value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NITRO_DATA", "../shared/datasets")
    absolute_nitro_data()  # what conftest does on import: the subprocesses run in other folders
    assert os.environ["NITRO_DATA"] == str(tmp_path.parent / "shared/datasets")
