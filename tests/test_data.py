"""Data: loading the official format, download/verify/extract against a local server, bad files,
augmentation and the loader."""
from __future__ import annotations

import contextlib
import http.server
import pickle
import shutil
import struct
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar.data import (
    AugmentConfig,
    BatchLoader,
    DatasetError,
    cutout,
    load_dataset,
    md5sum,
    normalize,
    random_crop,
    random_flip,
)
from cnn_cifar.data.datasets import CIFAR10
from cnn_cifar.data.download import download

from conftest import run_cli, write_fake_cifar100


def test_load_small_official_format(cifar_root):
    ds = load_dataset("cifar10", cifar_root, download=False)
    assert ds.x_train.shape == (500, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (200, 3, 32, 32) and ds.y_test.dtype == np.int64
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    # --data may also name the batch folder itself
    assert load_dataset("cifar10", cifar_root / "cifar-10-batches-py", download=False).x_train.shape[0] == 500


def test_official_url_and_md5():
    assert CIFAR10.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert CIFAR10.md5 == "c58f30108f718f92721af3b95e74349a"


def test_missing_data_without_download(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar10 not found: .*data_batch_1 is missing \(load with "
                                           r"download=True to fetch it, or from the folder holding"):
        load_dataset("cifar10", tmp_path, download=False)


def _copy(cifar_root, tmp_path) -> Path:
    shutil.copytree(cifar_root / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    return tmp_path / "cifar-10-batches-py"


def test_truncated_batch_names_the_file(cifar_root, tmp_path):
    d = _copy(cifar_root, tmp_path)
    raw = (d / "data_batch_3").read_bytes()
    (d / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"corrupt or truncated dataset file .*data_batch_3"):
        load_dataset("cifar10", tmp_path, download=False)


def test_wrong_shape_batch_is_corrupt(cifar_root, tmp_path):
    d = _copy(cifar_root, tmp_path)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((5, 100), np.uint8), "labels": [0] * 5}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"corrupt dataset file .*test_batch"):
        load_dataset("cifar10", tmp_path, download=False)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_batch_pickle_that_runs_code_is_refused(cifar_root, tmp_path):
    d = _copy(cifar_root, tmp_path)
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({"data": _Evil(), "labels": []}, f)
    with pytest.raises(DatasetError, match=r"data_batch_1 is not a CIFAR batch file: "
                                           r"refusing to load global 'builtins.print'"):
        load_dataset("cifar10", tmp_path, download=False)



# ------------------------------------------------------------------ the official files' own encoding
# The official batches were pickled by Python 2's cPickle (protocol 2) with NumPy 1: every string is a
# Python 2 ``str`` (SHORT_BINSTRING/BINSTRING, bytes of no declared encoding), and the array is rebuilt by
# ``numpy.core.multiarray._reconstruct`` with a state tuple whose raw data is such a string. Python 3 cannot
# write that, so these helpers emit the opcodes themselves.
def _py2_str(value: str | bytes) -> bytes:
    b = value.encode("latin1") if isinstance(value, str) else value
    if len(b) < 256:
        return pickle.SHORT_BINSTRING + bytes([len(b)]) + b
    return pickle.BINSTRING + struct.pack("<i", len(b)) + b


def _py2_int(v: int) -> bytes:
    if 0 <= v < 256:
        return pickle.BININT1 + bytes([v])
    if 0 <= v < 65536:
        return pickle.BININT2 + struct.pack("<H", v)
    return pickle.BININT + struct.pack("<i", v)


def _py2_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _py2_value(v) -> bytes:
    """A str, int, list or uint8 2-D array as Python 2 with NumPy 1 pickled it."""
    if isinstance(v, (str, bytes)):
        return _py2_str(v)
    if isinstance(v, int):
        return _py2_int(v)
    if isinstance(v, list):
        return pickle.EMPTY_LIST + pickle.MARK + b"".join(map(_py2_value, v)) + pickle.APPENDS
    assert isinstance(v, np.ndarray) and v.dtype == np.uint8
    dtype = (_py2_global("numpy", "dtype") + _py2_str("u1") + _py2_int(0) + _py2_int(1) + pickle.TUPLE3
             + pickle.REDUCE + pickle.MARK + _py2_int(3) + _py2_str("|") + pickle.NONE * 3 + _py2_int(-1)
             + _py2_int(-1) + _py2_int(0) + pickle.TUPLE + pickle.BUILD)
    shape = pickle.MARK + b"".join(_py2_int(n) for n in v.shape) + pickle.TUPLE
    return (_py2_global("numpy.core.multiarray", "_reconstruct") + _py2_global("numpy", "ndarray")
            + _py2_int(0) + pickle.TUPLE1 + _py2_str("b") + pickle.TUPLE3 + pickle.REDUCE
            + pickle.MARK + _py2_int(1) + shape + dtype + pickle.NEWFALSE + _py2_str(v.tobytes()) + pickle.TUPLE
            + pickle.BUILD)


def _py2_pickle(d: dict) -> bytes:
    items = b"".join(_py2_str(k) + _py2_value(v) for k, v in d.items())
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS + pickle.STOP


def _planes(k: int) -> np.ndarray:
    """Image k as (3, 32, 32): red grows along x, green along y, blue is k: no two axes look alike."""
    yy, xx = np.mgrid[0:32, 0:32]
    return np.stack([xx * 8, yy * 8, np.full((32, 32), 100 + k)]).astype(np.uint8)


def test_batches_written_by_python2_and_numpy1_load_with_their_pixels_in_place(cifar_root, tmp_path):
    """Each row is the red plane, then green, then blue, each 32 rows of 32 (the dataset's documented layout);
    the loaded image must put row[c * 1024 + y * 32 + x] at [c, y, x]."""
    d = _copy(cifar_root, tmp_path)
    rows = np.stack([_planes(k).reshape(-1) for k in range(4)])      # the documented row layout, written out
    assert rows[0, 1] == 8 and rows[0, 32] == 0 and rows[0, 1024 + 32] == 8 and rows[2, 2048] == 102
    per_file = {"test_batch": [3, 1, 4, 1], "data_batch_2": [5, 9, 2, 6]}
    for name, labels in per_file.items():
        (d / name).write_bytes(_py2_pickle({"batch_label": f"{name} in Python 2", "labels": labels, "data": rows,
                                            "filenames": [f"{name}_{k}.png" for k in range(4)]}))
    (d / "batches.meta").write_bytes(_py2_pickle({"num_cases_per_batch": 4, "label_names": [f"c{i}" for i in range(10)],
                                                  "num_vis": 3072}))
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.classes == [f"c{i}" for i in range(10)]
    np.testing.assert_array_equal(ds.x_test, np.stack([_planes(k) for k in range(4)]))
    assert ds.y_test.tolist() == per_file["test_batch"]
    first = load_dataset("cifar10", cifar_root, download=False)
    n1 = len(first.x_train) // 5                                      # data_batch_1's rows, then batch 2's
    np.testing.assert_array_equal(ds.x_train[n1:n1 + 4], np.stack([_planes(k) for k in range(4)]))
    assert ds.y_train[n1:n1 + 4].tolist() == per_file["data_batch_2"]
    np.testing.assert_array_equal(ds.x_train[:n1], first.x_train[:n1])


# ------------------------------------------------------------------ download against a local HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""
    truncate = False
    stall = 0.0             # seconds to wait, silent, after a third of the payload (a stuck server)

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        if self.stall:
            self.wfile.write(self.payload[: len(self.payload) // 3])
            self.wfile.flush()
            time.sleep(self.stall)
            return
        body = self.payload[: len(self.payload) // 3] if self.truncate else self.payload
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(payload: bytes, truncate: bool = False, stall: float = 0.0):
    handler = type("H", (_Handler,), {"payload": payload, "truncate": truncate, "stall": stall})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/cifar-10-python.tar.gz"
    finally:
        srv.shutdown()
        srv.server_close()


def test_download_verify_extract(cifar_tarball, tmp_path):
    with serve(cifar_tarball.read_bytes()) as url:
        ds = load_dataset("cifar10", tmp_path / "data", url=url, md5=md5sum(cifar_tarball), progress=False)
    assert ds.x_train.shape[0] == 500
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()
    assert not list((tmp_path / "data").glob("*.part")) and not list((tmp_path / "data").glob(".extract-*"))


def test_wrong_md5_leaves_nothing(cifar_tarball, tmp_path):
    with serve(cifar_tarball.read_bytes()) as url:
        with pytest.raises(DatasetError, match=r"md5 mismatch for cifar-10-python.tar.gz"):
            load_dataset("cifar10", tmp_path, url=url, md5="0" * 32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_interrupted_download_leaves_nothing(cifar_tarball, tmp_path):
    with serve(cifar_tarball.read_bytes(), truncate=True) as url:
        with pytest.raises(DatasetError, match=r"interrupted|could not download"):
            load_dataset("cifar10", tmp_path, url=url, md5=md5sum(cifar_tarball), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_server_that_stops_sending_times_out_and_leaves_nothing(cifar_tarball, tmp_path):
    with serve(cifar_tarball.read_bytes(), stall=3.0) as url:
        with pytest.raises(DatasetError, match=r"could not download .* timed out"):
            download(url, tmp_path / "cifar-10-python.tar.gz", md5sum(cifar_tarball), progress=False, timeout=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_labels_outside_the_classes_are_corrupt(cifar_root, tmp_path):
    d = _copy(cifar_root, tmp_path)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 9, 10]}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"corrupt cifar10 test labels: values outside 0\.\.9"):
        load_dataset("cifar10", tmp_path, download=False)


def test_unreachable_server_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"could not download http://127.0.0.1:9/"):
        load_dataset("cifar10", tmp_path, url="http://127.0.0.1:9/cifar-10-python.tar.gz", md5="0" * 32,
                     progress=False)


def test_tar_member_escaping_target_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    (tmp_path / "payload.txt").write_text("x")
    with tarfile.open(evil, "w:gz") as t:
        t.add(tmp_path / "payload.txt", arcname="../escaped.txt")
    with serve(evil.read_bytes()) as url:
        with pytest.raises(DatasetError, match=r"refusing to extract '../escaped.txt'"):
            load_dataset("cifar10", tmp_path / "data", url=url, md5=md5sum(evil), progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()


# ------------------------------------------------------------------ augmentation and loader
def test_random_crop_is_a_shifted_window():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 3, 8, 8), dtype=np.uint8)
    out = random_crop(x, 2, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == np.uint8
    r = np.random.default_rng(1)
    oy, ox = r.integers(0, 5, 16), r.integers(0, 5, 16)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(16):
        np.testing.assert_array_equal(out[i], padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8])


def test_flip_and_cutout():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    out = random_flip(np.concatenate([x] * 50), np.random.default_rng(0))
    flipped = [np.array_equal(o, x[i % 2][:, :, ::-1]) for i, o in enumerate(out)]
    kept = [np.array_equal(o, x[i % 2]) for i, o in enumerate(out)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 20 < sum(flipped) < 80   # about half, each either unchanged or mirrored
    xf = np.ones((64, 3, 32, 32), np.float32)
    cutout(xf, 8, np.random.default_rng(0))
    zeros = (xf[:, 0] == 0).sum(axis=(1, 2))
    assert zeros.max() == 64 and zeros.min() >= 16      # a full 8x8 square, or clipped at a border
    assert (xf[:, 0] == 0).sum() == (xf[:, 2] == 0).sum()   # same square on every channel


def test_shuffled_epochs_each_visit_every_image_in_a_new_order():
    x = np.zeros((40, 3, 2, 2), np.uint8)
    loader = BatchLoader(x, np.arange(40), 8, (0.5,) * 3, (0.5,) * 3, shuffle=True,
                         rng=np.random.default_rng(3), prefetch=False)
    orders = [np.concatenate([y for _, y in loader]) for _ in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(40))
    assert len({tuple(o) for o in orders}) == 3 and orders[0].tolist() != list(range(40))


def test_normalize_matches_definition():
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    want = (x / 255.0 - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    got = normalize(x, mean, std)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_loader_is_seeded_and_prefetch_gives_the_same_stream(cifar_root):
    ds = load_dataset("cifar10", cifar_root, download=False)

    def run(prefetch: bool, seed: int):
        ld = BatchLoader(ds.x_train, ds.y_train, 64, CIFAR10.mean, CIFAR10.std, shuffle=True,
                         augment_cfg=AugmentConfig(4, True, 8), rng=np.random.default_rng(seed), drop_last=True,
                         prefetch=prefetch)
        return [(x.copy(), y.copy()) for x, y in ld]

    a, b, c = run(True, 3), run(False, 3), run(False, 4)
    assert len(a) == 500 // 64
    assert all(np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not np.array_equal(a[0][0], c[0][0])
    assert a[0][0].dtype == np.float32 and a[0][0].shape == (64, 3, 32, 32)


def test_loader_covers_every_test_image_in_order(cifar_root):
    ds = load_dataset("cifar10", cifar_root, download=False)
    ys = np.concatenate([y for _, y in BatchLoader(ds.x_test, ds.y_test, 64, CIFAR10.mean, CIFAR10.std)])
    np.testing.assert_array_equal(ys, ds.y_test)


def test_local_tarball_with_wrong_md5_says_so_when_offline(cifar_tarball, tmp_path):
    shutil.copy(cifar_tarball, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DatasetError, match=r"cifar-10-python.tar.gz is not the official file \(md5 [0-9a-f]{32}, "
                                           r"expected 0{32}\) and no fresh copy could be fetched"):
        load_dataset("cifar10", tmp_path, url="http://127.0.0.1:9/cifar-10-python.tar.gz", md5="0" * 32,
                     progress=False)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_local_tarball_with_right_md5_needs_no_network(cifar_tarball, tmp_path):
    shutil.copy(cifar_tarball, tmp_path / "cifar-10-python.tar.gz")
    ds = load_dataset("cifar10", tmp_path, url="http://127.0.0.1:9/cifar-10-python.tar.gz", md5=md5sum(cifar_tarball),
                      progress=False)
    assert ds.x_test.shape[0] == 200


def test_cifar100_fine_labels(tmp_path):
    write_fake_cifar100(tmp_path)
    ds = load_dataset("cifar100", tmp_path, download=False)
    assert ds.x_train.shape == (300, 3, 32, 32) and ds.x_test.shape == (100, 3, 32, 32)
    assert len(ds.classes) == 100 and ds.classes[7] == "fine7"
    assert ds.y_train.max() < 100 and ds.spec.num_classes == 100
    with open(tmp_path / "cifar-100-python" / "train", "rb") as f:
        written = pickle.load(f)
    np.testing.assert_array_equal(ds.y_train, written["fine_labels"])      # fine, not coarse, labels
    with pytest.raises(DatasetError, match=r"cifar100 not found: .*cifar-100-python/train is missing"):
        load_dataset("cifar100", tmp_path / "empty", download=False)


@pytest.mark.slow
def test_cifar100_train_and_test_cli(tmp_path):
    import json
    write_fake_cifar100(tmp_path)
    p = run_cli("train", "--dataset", "cifar100", "--data", str(tmp_path), "--no-download", "--epochs", "1",
                "--batch-size", "32", "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = run_cli("test", "--resume", "checkpoint/cnn_best.pkl", "--data", str(tmp_path), "--no-download", "--quiet",
                "--json", "r.json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["dataset"] == "cifar100" and len(res["per_class"]) == 100 and res["n"] == 100
    assert "confusion matrix: 100x100" in p.stdout
