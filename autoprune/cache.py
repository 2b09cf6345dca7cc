"""autoprune's cache folder, written so that nobody else who can write to it can turn it
against its user.

A cache may be shared (a team's folder, a volume several containers mount, a folder under
/tmp that someone else made first). So: folders are made 0700; a folder owned by another user
or writable by others is refused unless ``AUTOPRUNE_CACHE_SHARED=1`` says it is shared on
purpose; temporaries get unpredictable names made with ``O_EXCL`` (a planted symlink is never
followed); reads never follow a symlink; and a cached file is used only when its content hash
matches the one recorded when it was written.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from autoprune.errors import AutoPruneError

SHARED_ENV = "AUTOPRUNE_CACHE_SHARED"


class CacheError(AutoPruneError):
    """The cache folder is not safe to use, or a cached file is not what was written there."""


def cache_root() -> Path:
    """``$AUTOPRUNE_CACHE`` or ``~/.cache/autoprune``."""
    return Path(os.environ.get("AUTOPRUNE_CACHE", Path.home() / ".cache" / "autoprune"))


def cache_folder(name: str) -> Path:
    """The cache's subfolder ``name``, created 0700 (with the cache root) when missing; both
    are checked to be the user's own."""
    root = cache_root()
    folder = root / name
    for path in (root, folder):
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(
                f"cannot create the cache folder {path}: {e.strerror}; set AUTOPRUNE_CACHE"
            ) from None
        check_folder(path)
    return folder


def check_folder(path: Path) -> None:
    """Refuse a folder that is a symlink, is owned by someone else or is writable by others,
    unless the cache is declared shared."""
    info = os.lstat(path)
    if os.environ.get(SHARED_ENV) == "1":
        return
    if stat.S_ISLNK(info.st_mode):
        raise CacheError(f"the cache folder {path} is a symlink; point AUTOPRUNE_CACHE at the real folder")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise CacheError(
            f"the cache folder {path} belongs to another user (uid {info.st_uid}); use your own "
            f"(AUTOPRUNE_CACHE) or set {SHARED_ENV}=1 if it is shared on purpose"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(
            f"the cache folder {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"chmod go-w it, or set {SHARED_ENV}=1 if it is shared on purpose"
        )


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a fresh temporary in the same folder (``mkstemp``:
    ``O_EXCL``, so a symlink planted at any name is never followed), then rename it over
    ``path`` (a rename replaces a symlink, never writes through it). Returns its digest."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest(data)


def read_bytes(path: Path, *, limit: int = 1 << 34) -> bytes | None:
    """A cached file's bytes, or None when it is missing; a symlink in its place (or anything
    but a regular file) is an error naming the entry to delete."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CacheError(f"the cache entry {path} cannot be read ({e.strerror}): delete it") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode) or os.fstat(f.fileno()).st_size > limit:
            raise CacheError(f"the cache entry {path} is not a regular file of a sane size: delete it")
        return f.read()


def read_verified(path: Path, expected: object) -> bytes | None:
    """The bytes of ``path`` when their digest is ``expected``; None when the file is missing;
    an error naming the entry to delete when they differ (a swapped or damaged file)."""
    data = read_bytes(path)
    if data is None:
        return None
    if not isinstance(expected, str) or digest(data) != expected:
        raise CacheError(
            f"the cache entry {path} does not match the hash recorded when it was written: delete it"
        )
    return data
