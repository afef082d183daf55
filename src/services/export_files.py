"""The files under BULK_EXPORT_PATH, from the first write to the last removal.

- An export made inside a stage gets an id fixed by its job, its stage and its place among
  the stage's exports, so a stage resumed after a crash writes and registers the same export
  again (the store replaces the record) instead of adding a second one.
- A deleted job's folder goes with it (`remove_job_files`): exports, stage outputs and
  fetched bodies, whatever their age.
- The sweep, run at start-up and with every cleanup, removes what crashes and finished jobs
  leave: partial files, export files no record names, and the working files (stage outputs,
  fetched bodies) of jobs that are gone or finished with no export left to download. It only
  touches names the service writes, and only files untouched for SWEEP_GRACE_S, so a writer
  in another process is never raced.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from src.services.domain import Job, utcnow
from src.services.store.base import Store

#: A file must be this old before the sweep removes it (a slow writer touches it meanwhile).
SWEEP_GRACE_S = 600.0
EXPORT_FILE = re.compile(r"[A-Za-z0-9_-]{16,64}\.(json|csv|zip)")
PARTIAL_FILE = re.compile(r"\.[A-Za-z0-9_-]{16,64}\.(json|csv|zip)\.partial")
STAGE_FILE = re.compile(r"[a-z_]{1,64}\.(json|tmp)")
BODY_FILE = re.compile(r"\d{1,9}")
#: Sub-folders of a job's folder holding working files, and the names found in each.
WORKING_DIRS = {"stages": STAGE_FILE, "bodies": BODY_FILE}


@dataclass
class _StageExports:
    job_id: str
    stage: str
    made: int = 0


_current_stage: ContextVar[_StageExports | None] = ContextVar("export_stage", default=None)


@contextlib.contextmanager
def stage_exports(job_id: str, stage: str) -> Iterator[None]:
    """Exports the job makes within this block are the stage's (see new_export_id)."""
    token = _current_stage.set(_StageExports(job_id, stage))
    try:
        yield
    finally:
        _current_stage.reset(token)


def new_export_id(job_id: str) -> tuple[str, bool]:
    """(id, fixed): a random id -- or, inside a stage of this job, the id of the stage's
    next export, the same on every attempt at the stage."""
    scope = _current_stage.get()
    if scope is None or scope.job_id != job_id:
        return secrets.token_urlsafe(18), False
    scope.made += 1
    seed = f"{job_id}\0{scope.stage}\0{scope.made}".encode()
    return base64.urlsafe_b64encode(hashlib.sha256(seed).digest()[:18]).decode(), True


@dataclass
class Swept:
    files: int = 0
    bytes: int = 0

    def add(self, other: Swept) -> None:
        self.files += other.files
        self.bytes += other.bytes


async def sweep(root: Path, store: Store, grace_s: float = SWEEP_GRACE_S) -> Swept:
    """Remove leftover files under `root` (one folder per job); returns what went."""
    swept = Swept()
    cutoff = time.time() - grace_s
    for folder in await asyncio.to_thread(_job_folders, root):
        job = await store.get_job(folder.name)
        live = _live_exports(job)
        working = job is not None and (not job.is_terminal or bool(live))
        swept.add(await asyncio.to_thread(_sweep_folder, folder, live, working, cutoff))
    return swept


def remove_job_files(root: Path, job_id: str) -> Swept:
    """Remove the files the service wrote for a deleted job (its exports, partial exports,
    stage outputs and fetched bodies) and then its folder; names the service does not write
    are left, and keep the folder."""
    if not job_id or job_id in (".", "..") or Path(job_id).name != job_id:
        return Swept()  # not a folder name the service made
    folder = root / job_id
    if folder.is_symlink() or not folder.is_dir():
        return Swept()
    return _sweep_folder(folder, live=set(), working=False, cutoff=math.inf)


def _job_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [entry for entry in root.iterdir() if entry.is_dir() and not entry.is_symlink()]


def _live_exports(job: Job | None) -> set[str]:
    """File names of the job's exports that may still be downloaded."""
    if job is None:
        return set()
    now = utcnow()
    return {Path(e.relative_path).name for e in job.exports if e.expires_at > now}


def _sweep_folder(folder: Path, live: set[str], working: bool, cutoff: float) -> Swept:
    swept = Swept()
    for entry in _files(folder):
        if entry.name in live or not _old(entry, cutoff):
            continue
        if EXPORT_FILE.fullmatch(entry.name) or PARTIAL_FILE.fullmatch(entry.name):
            swept.add(_remove(entry))
    for name, pattern in WORKING_DIRS.items():
        for entry in _files(folder / name):
            leftover = entry.suffix == ".tmp" or not working
            if leftover and pattern.fullmatch(entry.name) and _old(entry, cutoff):
                swept.add(_remove(entry))
        if not working:
            _remove_if_empty(folder / name)
    if not working:
        _remove_if_empty(folder)
    return swept


def _files(folder: Path) -> list[Path]:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return [entry for entry in folder.iterdir() if entry.is_file() and not entry.is_symlink()]
    return []


def _old(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _remove(path: Path) -> Swept:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:  # removed meanwhile by a concurrent cleanup
        return Swept()
    return Swept(1, size)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or gone
        os.rmdir(folder)
