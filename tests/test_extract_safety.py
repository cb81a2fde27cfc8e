"""Extraction safety of cnn_cifar.data.download: hostile and broken tarballs.

``extract(archive, root, folder)`` unpacks into a temporary ``root/.extract-*`` folder and renames
``folder`` into place. Every hostile or broken archive below must be refused with a DatasetError whose
message says why, and must leave the file system exactly as it was: nothing written outside ``root``
(in particular not into ``root`` itself, which is where a ``..`` member of the temporary folder would land),
no ``.extract-*`` folder, no partial ``root/cifar-10-batches-py``, and an existing target folder untouched.

Each hostile archive also carries a complete, valid ``cifar-10-batches-py/`` folder, so the only reason
for the refusal is the hostile member: without the check the target folder would appear.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cnn_cifar.data import DatasetError, load_dataset, md5sum
from cnn_cifar.data.download import download_and_extract, extract
from test_data import serve

from conftest import make_tarball, write_fake_cifar10

FOLDER = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
UNREACHABLE = f"http://127.0.0.1:9/{ARCHIVE_NAME}"   # nothing listens on port 9: any download attempt fails


# ------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    """A tiny CIFAR-10 folder in the official layout (10 train / 5 test images): these tests only move
    files around, so small files keep the many tarballs cheap. Shadows conftest's larger one here."""
    root = tmp_path_factory.mktemp("tiny_cifar")
    write_fake_cifar10(root, n_train=10, n_test=5)
    return root


@pytest.fixture(scope="module")
def cifar_tarball(tmp_path_factory, cifar_root) -> Path:
    return make_tarball(cifar_root, tmp_path_factory.mktemp("tiny_tarball") / ARCHIVE_NAME)


def snapshot(top: Path) -> dict[str, object]:
    """Everything under ``top`` (relative path -> file bytes, 'dir', or ('link', target)), links not followed."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = ("special", p.lstat().st_mode)
    return out


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    return ti, data


def _special(name: str, kind: bytes, linkname: str = "", dev: tuple[int, int] = (0, 0)) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    ti.devmajor, ti.devminor = dev
    ti.mode = 0o644
    return ti, None


def _good_members(cifar_root: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The complete small CIFAR-10 folder as tar members (folder entry first)."""
    d = tarfile.TarInfo(FOLDER)
    d.type, d.mode = tarfile.DIRTYPE, 0o755
    members: list = [(d, None)]
    for f in sorted((cifar_root / FOLDER).iterdir()):
        members.append(_file(f"{FOLDER}/{f.name}", f.read_bytes()))
    return members


def write_tar(path: Path, members) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _outside(tmp_path: Path) -> Path:
    """A folder beside root (not inside it) that hostile members aim at."""
    d = tmp_path / "outside"
    d.mkdir(exist_ok=True)
    return d


# Each case: (id, builder(tmp_path) -> extra members placed after the good folder, message regex).
# The regexes name the member, so a refusal for some other reason (e.g. Python's own tar filter, which
# surfaces as "corrupt archive") does not pass.
def _dotdot(name):
    return lambda tmp_path: [_file(name, b"escaped")]


def _absolute(tmp_path):
    return [_file(str(_outside(tmp_path) / "abs.txt"), b"escaped")]


def _symlink_then_write_through(tmp_path):
    """The classic two-step attack: a link inside the folder to a folder outside, then a file through it."""
    return [_special(f"{FOLDER}/link", tarfile.SYMTYPE, linkname=str(_outside(tmp_path))),
            _file(f"{FOLDER}/link/pwned.txt", b"escaped")]


def _relative_symlink(tmp_path):
    return [_special(f"{FOLDER}/up", tarfile.SYMTYPE, linkname="../../outside")]


def _symlink_inside(tmp_path):
    """Even a link that stays inside the folder is refused (Python's 'data' filter alone would allow it)."""
    return [_special(f"{FOLDER}/alias", tarfile.SYMTYPE, linkname="data_batch_1")]


def _hardlink_outside_then_overwrite(tmp_path):
    """A hard link to a file outside, then a regular member of the same name that would overwrite it."""
    victim = _outside(tmp_path) / "victim.txt"
    victim.write_bytes(b"original")
    return [_special(f"{FOLDER}/hl", tarfile.LNKTYPE, linkname=str(victim)),
            _file(f"{FOLDER}/hl", b"overwritten")]


def _hardlink_inside(tmp_path):
    return [_special(f"{FOLDER}/hl", tarfile.LNKTYPE, linkname=f"{FOLDER}/data_batch_1")]


def _fifo(tmp_path):
    return [_special(f"{FOLDER}/fifo", tarfile.FIFOTYPE)]


def _chardev(tmp_path):
    return [_special(f"{FOLDER}/null", tarfile.CHRTYPE, dev=(1, 3))]


def _blockdev(tmp_path):
    return [_special(f"{FOLDER}/sda", tarfile.BLKTYPE, dev=(8, 0))]


OUTSIDE = r"': it would land outside "
SPECIAL = r"': links and special files are not allowed"
HOSTILE = [
    ("dotdot-into-root", _dotdot("../escaped.txt"), r"refusing to extract '\.\./escaped\.txt" + OUTSIDE),
    ("dotdot-beyond-root", _dotdot("../../escaped.txt"), r"refusing to extract '\.\./\.\./escaped\.txt" + OUTSIDE),
    # '..' of the .extract-* folder is root itself: this name escapes the extraction folder but stays in root,
    # so it is refused only by a check made against the extraction folder (root is named 'data' here)
    ("dotdot-back-into-root", _dotdot("../data/escaped.txt"),
     r"refusing to extract '\.\./data/escaped\.txt" + OUTSIDE),
    ("dotdot-via-folder", _dotdot(f"{FOLDER}/../../escaped.txt"),
     rf"refusing to extract '{FOLDER}/\.\./\.\./escaped\.txt" + OUTSIDE),
    ("absolute-path", _absolute, r"refusing to extract '/[^']*/outside/abs\.txt" + OUTSIDE),
    ("symlink-to-outside-dir", _symlink_then_write_through, rf"refusing to extract '{FOLDER}/link" + SPECIAL),
    ("relative-symlink-up", _relative_symlink, rf"refusing to extract '{FOLDER}/up" + SPECIAL),
    ("symlink-inside-folder", _symlink_inside, rf"refusing to extract '{FOLDER}/alias" + SPECIAL),
    ("hardlink-to-outside", _hardlink_outside_then_overwrite, rf"refusing to extract '{FOLDER}/hl" + SPECIAL),
    ("hardlink-inside-folder", _hardlink_inside, rf"refusing to extract '{FOLDER}/hl" + SPECIAL),
    ("fifo", _fifo, rf"refusing to extract '{FOLDER}/fifo" + SPECIAL),
    ("char-device", _chardev, rf"refusing to extract '{FOLDER}/null" + SPECIAL),
    ("block-device", _blockdev, rf"refusing to extract '{FOLDER}/sda" + SPECIAL),
]


def _layout(tmp_path: Path, with_target: bool, cifar_root: Path) -> Path:
    """root = tmp_path/'data' (created), optionally holding an existing good target folder."""
    root = tmp_path / "data"
    root.mkdir()
    if with_target:
        shutil.copytree(cifar_root / FOLDER, root / FOLDER)
        (root / FOLDER / "user_note.txt").write_text("the user's own file must survive")
    return root


# ------------------------------------------------------------------ hostile members, extract() directly
@pytest.mark.parametrize("hostile_first", [False, True], ids=["after-folder", "before-folder"])
@pytest.mark.parametrize("with_target", [False, True], ids=["no-target", "existing-target"])
@pytest.mark.parametrize("case, extra, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_member_is_refused_and_nothing_changes(case, extra, message, with_target, hostile_first,
                                                       cifar_root, tmp_path):
    """A hostile member makes extract() raise DatasetError naming it, before anything is written: the whole
    tmp_path tree (root, the folder beside it, the archive's folder) is byte-for-byte what it was, so there is
    no escaped file in root or beside it, no .extract-* folder, no new target, and an existing target (with a
    file of the user's) is untouched. Whether the hostile member comes before or after the good folder (the
    check covers every member, not only those after the folder)."""
    root = _layout(tmp_path, with_target, cifar_root)
    good, bad = _good_members(cifar_root), extra(tmp_path)
    archive = write_tar(tmp_path / "in" / ARCHIVE_NAME, bad + good if hostile_first else good + bad)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=message):
        extract(archive, root, FOLDER)
    assert snapshot(tmp_path) == before


def test_good_archive_extracts_and_replaces_an_incomplete_target(cifar_root, tmp_path):
    """Control for the tests above: the same good members without a hostile one extract fine, the result
    equals the source folder, an incomplete old target is replaced, and no .extract-* folder remains."""
    root = tmp_path / "data"
    (root / FOLDER).mkdir(parents=True)
    (root / FOLDER / "stale.txt").write_text("old")
    archive = write_tar(tmp_path / "in" / ARCHIVE_NAME, _good_members(cifar_root))
    assert extract(archive, root, FOLDER) == root / FOLDER
    assert snapshot(root / FOLDER) == snapshot(cifar_root / FOLDER)
    assert sorted(p.name for p in root.iterdir()) == [FOLDER]


# ------------------------------------------------------------------ archives without the folder
def _no_folder_cases(cifar_root: Path):
    files = [_file(f.name, f.read_bytes()) for f in sorted((cifar_root / FOLDER).iterdir())]
    renamed = [_file(f"cifar-10-batches/{f.name}", f.read_bytes()) for f in sorted((cifar_root / FOLDER).iterdir())]
    return {"files-at-top-level": files,
            "other-folder-name": renamed,
            "folder-name-is-a-file": [_file(FOLDER, b"not a folder")],
            "empty-tarball": []}


@pytest.mark.parametrize("with_target", [False, True], ids=["no-target", "existing-target"])
@pytest.mark.parametrize("case", ["files-at-top-level", "other-folder-name", "folder-name-is-a-file",
                                  "empty-tarball"])
def test_tarball_without_the_folder_is_refused(case, with_target, cifar_root, tmp_path):
    """A well-formed tarball that lacks cifar-10-batches-py/ raises 'does not contain the folder' and leaves
    nothing behind: the members it did extract went to the temporary folder, which is removed."""
    root = _layout(tmp_path, with_target, cifar_root)
    archive = write_tar(tmp_path / "in" / ARCHIVE_NAME, _no_folder_cases(cifar_root)[case])
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=rf"archive {re.escape(str(archive))} does not contain the folder "
                                           rf"{FOLDER}/$"):
        extract(archive, root, FOLDER)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ corrupt archives
def _corrupt_bytes(kind: str, cifar_tarball: Path) -> bytes:
    if kind == "random-bytes":
        return np.random.default_rng(0).bytes(4096)
    if kind == "truncated-gzip":
        raw = cifar_tarball.read_bytes()
        return raw[: len(raw) // 2]
    if kind == "gzip-of-garbage":
        import gzip
        return gzip.compress(b"\x01" * 5000)
    raise AssertionError(kind)


CORRUPT = ["random-bytes", "truncated-gzip", "gzip-of-garbage"]


@pytest.mark.parametrize("with_target", [False, True], ids=["no-target", "existing-target"])
@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_archive_is_one_dataset_error(kind, with_target, cifar_root, cifar_tarball, tmp_path):
    """Bytes that are not a readable tarball raise DatasetError('corrupt archive <path>: <ExcType>: ...')
    instead of a raw tarfile/EOF error, and nothing changes on disk."""
    root = _layout(tmp_path, with_target, cifar_root)
    archive = tmp_path / "in" / ARCHIVE_NAME
    archive.parent.mkdir()
    archive.write_bytes(_corrupt_bytes(kind, cifar_tarball))
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=rf"^corrupt archive {re.escape(str(archive))}: (ReadError|EOFError): "):
        extract(archive, root, FOLDER)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_archive_with_matching_md5_served(kind, cifar_tarball, tmp_path):
    """load_dataset(url=..., md5=...) against a local server that serves corrupt bytes whose md5 is the one
    asked for: the download is accepted (md5 matches), extraction fails with 'corrupt archive', and root
    holds only the downloaded tarball (no .part, no .extract-*, no cifar-10-batches-py)."""
    payload = _corrupt_bytes(kind, cifar_tarball)
    root = tmp_path / "data"
    with serve(payload) as url:
        with pytest.raises(DatasetError, match=rf"^corrupt archive {re.escape(str(root / ARCHIVE_NAME))}: "
                                               r"(ReadError|EOFError): "):
            load_dataset("cifar10", root, url=url, md5=hashlib.md5(payload).hexdigest(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert sorted(p.name for p in root.iterdir()) == [ARCHIVE_NAME]
    assert (root / ARCHIVE_NAME).read_bytes() == payload


def test_corrupt_local_archive_with_matching_md5_needs_no_network(cifar_root, cifar_tarball, tmp_path):
    """A corrupt tarball already in root whose md5 is the expected one is used as is (the URL is unreachable,
    so a download attempt would say 'could not download'); the error is 'corrupt archive', and an incomplete
    target folder already there (missing test_batch, so load_dataset tries to fetch) is left as it was."""
    root = tmp_path / "data"
    root.mkdir()
    shutil.copytree(cifar_root / FOLDER, root / FOLDER)
    (root / FOLDER / "test_batch").unlink()
    payload = _corrupt_bytes("truncated-gzip", cifar_tarball)
    (root / ARCHIVE_NAME).write_bytes(payload)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=rf"^corrupt archive {re.escape(str(root / ARCHIVE_NAME))}: "):
        load_dataset("cifar10", root, url=UNREACHABLE, md5=md5sum(root / ARCHIVE_NAME), progress=False)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ through load_dataset / download_and_extract
SERVED = [h for h in HOSTILE if h[0] in ("dotdot-into-root", "dotdot-back-into-root", "dotdot-beyond-root",
                                         "absolute-path", "symlink-to-outside-dir", "hardlink-to-outside", "fifo")]


@pytest.mark.parametrize("case, extra, message", SERVED, ids=[h[0] for h in SERVED])
def test_hostile_tarball_served_with_matching_md5(case, extra, message, cifar_root, tmp_path):
    """End to end: load_dataset downloads a hostile tarball (md5 matches) from a local server and refuses it.
    The only change on disk is root/cifar-10-python.tar.gz (the verified download): in particular nothing in
    root besides it (where '../x' relative to the .extract-* folder would land), nothing beside root (where
    '../../x' would land), and no cifar-10-batches-py. This is the check the older test in test_data.py
    meant to make but made one folder too high."""
    root = tmp_path / "data"
    root.mkdir()
    archive = write_tar(tmp_path / "src" / ARCHIVE_NAME, _good_members(cifar_root) + extra(tmp_path))
    before = snapshot(tmp_path)
    with serve(archive.read_bytes()) as url:
        with pytest.raises(DatasetError, match=message):
            load_dataset("cifar10", root, url=url, md5=md5sum(archive), progress=False)
    after = snapshot(tmp_path)
    assert after.pop(f"data/{ARCHIVE_NAME}") == archive.read_bytes()
    assert after == before


def test_download_and_extract_refuses_local_hostile_tarball(cifar_root, tmp_path):
    """download_and_extract with the hostile tarball already in root (right md5, unreachable URL): refused
    by the member check, not by a download error, and root is unchanged."""
    root = tmp_path / "data"
    write_tar(root / ARCHIVE_NAME, _good_members(cifar_root) + [_file("../escaped.txt", b"escaped")])
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=r"refusing to extract '\.\./escaped\.txt': it would land outside "):
        download_and_extract(UNREACHABLE, root, md5sum(root / ARCHIVE_NAME), FOLDER, progress=False)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ the final rename
class _RenameFailed(OSError):
    """Stands in for a rename that the OS refuses (EBUSY, EPERM, ...) or a Ctrl-C at that moment."""


def test_failed_final_rename_keeps_the_existing_target(cifar_root, tmp_path, monkeypatch):
    """If moving the freshly extracted folder into place fails, the existing target must still be there,
    unchanged (the module promises that nothing half-done is left behind), and the failure is a DatasetError.
    The failure is injected only for the rename of the newly extracted folder onto root/cifar-10-batches-py
    (putting the old copy back is a rename too, and must still work)."""
    root = _layout(tmp_path, True, cifar_root)
    archive = write_tar(tmp_path / "in" / ARCHIVE_NAME, _good_members(cifar_root))
    target = root / FOLDER
    before = snapshot(target)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == target and Path(src).parent.name.startswith(".extract-"):
            raise _RenameFailed(16, "Device or resource busy", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)          # the module calls os.replace
    with pytest.raises(DatasetError, match=r"could not move the extracted cifar-10-batches-py/ into .*busy"):
        extract(archive, root, FOLDER)
    monkeypatch.undo()
    assert not list(root.glob(".extract-*"))
    assert target.is_dir(), "the existing target folder was deleted"
    assert snapshot(target) == before
