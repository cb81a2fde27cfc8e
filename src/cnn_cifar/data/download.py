"""Download a dataset tarball with a progress bar, verify its md5, and extract it safely and atomically.

Nothing half-done is left behind: the download goes to ``<name>.part`` and is renamed only after the
md5 matches; extraction goes to a temporary folder beside the target and is renamed into place.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt, or could not be fetched (the message names the file)."""


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, md5: str | None = None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Fetch url to dest (via dest.part), checking md5 if given. Returns dest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {dest.name}",
                      disable=not progress, leave=False) as bar:
                while True:
                    block = resp.read(1 << 16)
                    if not block:
                        break
                    out.write(block)
                    bar.update(len(block))
        if total is not None and part.stat().st_size != total:
            raise DatasetError(f"download of {url} was interrupted: got {part.stat().st_size} of {total} bytes")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        if isinstance(exc, DatasetError):
            raise
        reason = getattr(exc, "reason", exc)
        raise DatasetError(f"could not download {url} to {dest}: {reason}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            part.unlink(missing_ok=True)
            raise DatasetError(f"md5 mismatch for {dest.name} downloaded from {url}: got {got}, expected {md5}")
    os.replace(part, dest)
    return dest


def _check_members(tar: tarfile.TarFile, root: Path) -> None:
    root = root.resolve()
    for m in tar.getmembers():
        target = (root / m.name).resolve()
        if not (target == root or root in target.parents):
            raise DatasetError(f"refusing to extract {m.name!r}: it would land outside {root}")
        if m.issym() or m.islnk() or m.isdev() or m.isfifo():
            raise DatasetError(f"refusing to extract {m.name!r}: links and special files are not allowed")


def extract(archive: str | os.PathLike, root: str | os.PathLike, folder: str) -> Path:
    """Extract ``folder`` from a .tar.gz into root/folder, atomically. Returns root/folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                _check_members(tar, tmp)
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, Exception) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"corrupt archive {archive}: {type(exc).__name__}: {exc}") from None
        src = tmp / folder
        if not src.is_dir():
            raise DatasetError(f"archive {archive} does not contain the folder {folder}/")
        dst = root / folder
        old = tmp.with_name(tmp.name + ".previous")    # beside tmp: no archive member can be there
        try:
            if dst.exists():             # set the old copy aside (same filesystem: a rename), never delete first
                os.replace(dst, old)
            os.replace(src, dst)
        except BaseException as exc:
            if old.exists() and not dst.exists():
                os.replace(old, dst)     # put the old copy back: a failed update loses nothing
            if isinstance(exc, OSError):
                raise DatasetError(f"could not move the extracted {folder}/ into {root}: {exc}") from None
            raise
        return dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.with_name(tmp.name + ".previous"), ignore_errors=True)


def download_and_extract(url: str, root: str | os.PathLike, md5: str, folder: str, progress: bool = True) -> Path:
    """Use root/<tarball> if it is already there with the right md5, else download it; then extract."""
    root = Path(root)
    archive = root / url.rstrip("/").rsplit("/", 1)[-1]
    local_md5 = md5sum(archive) if archive.is_file() else None
    if local_md5 != md5:
        print(f"downloading {url} -> {archive}" + (f" (the local copy's md5 {local_md5} is not the official "
                                                   f"{md5})" if local_md5 else ""))
        try:
            download(url, archive, md5, progress=progress)
        except DatasetError as exc:
            if local_md5 is None:
                raise
            raise DatasetError(f"{archive} is not the official file (md5 {local_md5}, expected {md5}) and no "
                               f"fresh copy could be fetched: {exc}") from None
    return extract(archive, root, folder)
