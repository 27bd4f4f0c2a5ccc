"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON only: NaN or Infinity (which strict readers reject) raise ValueError; see `finite_or_null`."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def finite_or_null(obj: Any) -> Any:
    """A copy of `obj` with every NaN/Infinity replaced by null; a dict that held any gets a `non_finite` list of
    the paths replaced (e.g. `stages.0.train_loss`), so a reader can tell a diverged number from a missing one."""
    paths: list[str] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            paths.append(path)
            return None
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
        return value

    clean = walk(obj, "")
    if paths and isinstance(clean, dict):
        clean["non_finite"] = sorted(set(clean.get("non_finite") or []) | set(paths))
    return clean


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` whole (an old `path` is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_dir() -> Path:
    """Where curlora keeps converted models and prepared data: $CURLORA_CACHE, else $XDG_CACHE_HOME/curlora."""
    if env := os.environ.get("CURLORA_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "curlora"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_name(label: str) -> str:
    """`label` as a file or folder name: characters other than letters, digits, "-", "_" and "." become "_"."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def package_version() -> str:
    """curlora's version from the installed metadata (pyproject.toml is the one place it is written);
    "unknown" when run from a source tree that was never installed (e.g. PYTHONPATH=src on a GPU machine)."""
    try:
        return version("curlora")
    except PackageNotFoundError:
        return "unknown"


def looks_like_path(name: str, *, file_suffixes: tuple[str, ...] = ()) -> bool:
    """A string that can only be a file system path, never a hub id like ``org/name``."""
    if name.startswith((".", "/", "~", "\\")) or "\\" in name or (os.sep != "/" and os.sep in name):
        return True
    if len(name) > 1 and name[1] == ":":  # Windows drive letter
        return True
    return name.count("/") > 1 or (bool(file_suffixes) and name.lower().endswith(file_suffixes))


def pip_download(requirement: str, dest: Path, *, binary: bool, timeout: float = 1800) -> str | None:
    """`pip download --no-deps` one wheel (`binary`) or source distribution into `dest`, with this interpreter's
    pip and its configured index. Returns None on success, else a short reason for the caller's error."""
    dest.mkdir(parents=True, exist_ok=True)
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, requirement, "-d", str(dest)]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` took over {timeout:.0f} s"
    except OSError as exc:
        return f"could not run {sys.executable} ({exc})"
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        return f"pip download exited with code {proc.returncode}: {tail}"
    return None
