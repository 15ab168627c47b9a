"""What hpcspec may create, overwrite and delete in an output folder.

Ownership: hpcspec deletes only what carries a mark it alone uses —

- files whose name starts with :data:`~hpcspec.files.atomic.TMP_PREFIX` (its temporaries);
- checkpoint folders ``step-NNNNNNNN[.tmp]`` holding the :data:`OWNED` marker file (written into
  every step folder before anything else);
- in an output folder, the files of :data:`RUN_FILES` (only with ``--overwrite``).

An *hpcspec run folder* is a folder that is absent, empty, holds the :data:`RUN_MARKER` file
(written when hpcspec first claims it), or holds nothing but names hpcspec writes
(:func:`foreign_entries` is empty: a folder written by a version before the marker). Any other
folder (``/``, a home directory, a folder with a user's files) is refused unless
``force_output`` (``--force-output``) is set. :func:`claim` also takes the folder's lock
(:mod:`hpcspec.files.lock`: one run per folder); writes go through :mod:`hpcspec.files.atomic`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from .atomic import TMP_PREFIX, WriteFailed, cause, write_text_atomic
from .lock import LOCK_FILE, acquire, is_held, release, timestamp

#: A marker file inside every checkpoint step folder hpcspec creates.
OWNED = ".hpcspec-owned"
#: A marker file in every output folder hpcspec has claimed.
RUN_MARKER = ".hpcspec-run"
#: Output folders this process claimed new or empty, by resolved path: whether the claim made them.
_FRESH: dict[str, bool] = {}
#: Names of the temporaries earlier versions wrote in a checkpoint folder (exact names only).
LEGACY_CHECKPOINT_TEMPORARIES = ("LATEST.tmp", "COMPLETE.tmp")
#: What ``run`` (and ``--per-block``, ``track``) writes in its output folder: ``--overwrite`` removes
#: these (the folders only through :func:`remove_run`'s ownership rules).
RUN_FILES = ("results.h5", "summary.json", "density.png", "landscape_1d.png", "landscape_2d.png",
             "track.h5", "blocks.h5", "blocks.png", "track_*.png", "trained.pt")
#: Sub-folders of a run: the checkpoints and the sweeps' sub-runs.
RUN_FOLDERS = ("checkpoints", "steps", "blocks")
#: What ``train`` writes in its output folder (it counts as hpcspec's, but ``--overwrite`` keeps it).
TRAIN_FILES = ("step_*.pt", "train.toml", "train_state.pt", "train_log.json")
_STEP_FOLDER = re.compile(r"^step-\d{8}(\.tmp)?$")
#: Any name of a step folder, committed, unfinished or damaged.
_STEP_NAME = re.compile(r"^step-\d{8}(\.tmp|\.damaged)?$")
#: The pointer files of a checkpoint folder.
CHECKPOINT_POINTERS = ("LATEST", "COMPLETE")
#: Temporaries of earlier versions: ``.results.h5.tmp-1234`` and ``.density.png.1234.tmp``.
_LEGACY_TMP = re.compile(r"^\.(?P<name>.+?)(\.tmp-\d+|\.\d+\.tmp)$")

log = logging.getLogger(__name__)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def is_hpcspec_name(name: str) -> bool:
    """Whether an output-folder entry has a name hpcspec writes there."""
    return (name.startswith(".hpcspec-") or _matches(name, RUN_FILES + RUN_FOLDERS + TRAIN_FILES)
            or _legacy_temporary(name))


def _legacy_temporary(name: str) -> bool:
    """``.results.h5.tmp-1234``-style temporaries of earlier versions, for names hpcspec writes."""
    match = _LEGACY_TMP.match(name)
    return match is not None and _matches(match.group("name"), RUN_FILES + TRAIN_FILES)


def foreign_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` that are not hpcspec's (empty when it is an hpcspec run folder)."""
    if not folder.is_dir():
        return []
    names = sorted(os.listdir(folder))
    if RUN_MARKER in names:
        return []
    return [name for name in names if not is_hpcspec_name(name)]


def mark_owned(folder: Path) -> None:
    """Write the :data:`OWNED` marker into a step folder hpcspec just created."""
    with open(folder / OWNED, "a"):
        pass


def owned_step(path: Path) -> bool:
    """A checkpoint step folder hpcspec made: the name pattern and the marker (or empty: a
    temporary killed before its marker, or a step whose removal was killed after its marker)."""
    if not (_STEP_FOLDER.match(path.name) and path.is_dir() and not path.is_symlink()):
        return False
    return (path / OWNED).is_file() or not any(path.iterdir())


def remove_step(path: Path) -> None:
    """Delete a step folder hpcspec made so that a kill at any moment leaves it recognisably
    hpcspec's: the manifest first (the step stops being loadable), then its files, the ownership
    marker last, then the folder. A plain recursive delete removes entries in directory order, and
    a kill that left files without the marker made the next resume refuse the folder as a user's."""
    try:
        entries = sorted(path.iterdir(), key=lambda entry: (entry.name != "manifest.json", entry.name == OWNED))
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        path.rmdir()
    except OSError:  # what is left stays marked, or empty: the next prune takes it
        pass


def check_checkpoint_folder(directory: Path, *, force: bool = False) -> None:
    """Refuse a checkpoint folder that holds what hpcspec did not write, as an output folder is:
    always where a user's entry has a name hpcspec would write or delete (``LATEST``,
    ``COMPLETE``, ``step-N``), else unless ``force``. Raises one :class:`InputError` line."""
    if not directory.is_dir():
        return
    foreign = [path.name for path in sorted(directory.iterdir()) if not _checkpoint_entry(path)]
    if not foreign:
        return
    clashing = [name for name in foreign if name in CHECKPOINT_POINTERS or _STEP_NAME.match(name)]
    shown = ", ".join(repr(name) for name in (clashing or foreign)[:3]) + (" …" if len(clashing or foreign) > 3 else "")
    if clashing:
        raise InputError(f"checkpoint folder {str(directory)!r} holds {shown}, not written by hpcspec, under names "
                         "its checkpoints use: choose another checkpoint.dir (or move them away)")
    if not force:
        raise InputError(f"checkpoint folder {str(directory)!r} holds files that are not hpcspec's checkpoints "
                         f"({shown}); choose a new or empty checkpoint.dir, or add --force-output to write there "
                         "anyway")


def _checkpoint_entry(path: Path) -> bool:
    """Whether ``path``, in a checkpoint folder, is something hpcspec wrote there."""
    name = path.name
    if path.is_symlink():
        return False
    if name.startswith(".hpcspec-") or name in LEGACY_CHECKPOINT_TEMPORARIES:
        return path.is_file()
    if name in CHECKPOINT_POINTERS:
        return path.is_file() and _pointer_is_ours(path)
    return owned_step(path) or (_STEP_NAME.match(name) is not None and (path / OWNED).is_file())


def _pointer_is_ours(path: Path) -> bool:
    """``LATEST`` names a step folder; ``COMPLETE`` is the JSON record of a finished run."""
    try:
        text = path.read_text()[:1 << 20]
        if path.name == "LATEST":
            return re.fullmatch(r"step-\d{8}\n?", text) is not None
        record = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and "config_toml" in record


def remove_temporaries(folder: Path, *, checkpoints: bool = False) -> list[str]:
    """Delete what a killed hpcspec left in ``folder``: its temporaries, and in a checkpoint
    folder its unfinished ``step-N.tmp`` folders. Nothing else is touched. Returns the names."""
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_symlink() or name in (LOCK_FILE, RUN_MARKER):
            continue
        if path.is_file() and (name.startswith(TMP_PREFIX) or _legacy_temporary(name)
                               or (checkpoints and name in LEGACY_CHECKPOINT_TEMPORARIES)):
            path.unlink(missing_ok=True)
            removed.append(name)
        elif checkpoints and name.endswith(".tmp") and owned_step(path):
            shutil.rmtree(path)
            removed.append(name)
    return removed


def remove_run(folder: Path, checkpoint_dir: Path) -> list[str]:
    """``--overwrite``: delete every file the run in ``folder`` wrote — :data:`RUN_FILES`, the
    owned checkpoints and pointers in ``checkpoint_dir``, and the sweeps' sub-run folders that are
    themselves hpcspec run folders. A user's files, and ``train``'s, stay. Returns what went."""
    removed: list[str] = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and not path.is_symlink() and _matches(path.name, RUN_FILES):
            path.unlink()
            removed.append(path.name)
    removed += [f"{checkpoint_dir.name}/{name}" for name in remove_checkpoints(checkpoint_dir)]
    for sweep in ("steps", "blocks"):
        parent = folder / sweep
        if not parent.is_dir() or parent.is_symlink():
            continue
        for sub in sorted(parent.iterdir()):
            if sub.is_dir() and not sub.is_symlink() and (sub / RUN_MARKER).is_file():
                removed += [f"{sweep}/{sub.name}/{name}" for name in remove_run(sub, sub / "checkpoints")]
                _remove_markers(sub)
        _rmdir_if_empty(parent)
    return removed


def remove_checkpoints(directory: Path) -> list[str]:
    """Every owned step folder, temporary and pointer (``LATEST``, ``COMPLETE``) in a checkpoint folder;
    the folder itself too when nothing else is left in it."""
    removed = remove_temporaries(directory, checkpoints=True)
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        if path.name in CHECKPOINT_POINTERS and path.is_file() and _pointer_is_ours(path):
            path.unlink()
            removed.append(path.name)
        elif owned_step(path) or (path.name.endswith(".damaged") and (path / OWNED).is_file()):
            shutil.rmtree(path)
            removed.append(path.name)
    _rmdir_if_empty(directory)
    return removed


def _remove_markers(folder: Path) -> None:
    """A sub-run folder emptied by :func:`remove_run`: drop its marker and lock, then the folder if empty."""
    for name in (RUN_MARKER, LOCK_FILE):
        (folder / name).unlink(missing_ok=True)
    _rmdir_if_empty(folder)


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def make_folder(folder: Path, what: str) -> None:
    """Create ``folder`` and its parents, or raise one :class:`InputError` line naming ``what`` it
    is for and what stands in the way (a symbolic link to a missing path, a file, the OS's reason)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {what} {str(folder)!r} ({_in_the_way(folder) or cause(exc)})") from None


def _in_the_way(folder: Path) -> str | None:
    """Why ``folder`` cannot be made, where the OS's reason would mislead ("File exists")."""
    for path in (folder, *folder.parents):
        if path.is_symlink() and not path.exists():
            return f"{str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does not exist"
        if path.exists() and not path.is_dir():
            return f"{str(path)!r} is a file, not a folder"
    return None


def claim(folder: Path, *, force: bool = False, command: str = "run") -> None:
    """Rank 0: make ``folder`` this run's — create it, refuse a folder that is not an hpcspec run
    (unless ``force``), take its lock, write the run marker, and remove what a killed run left.

    Raises :class:`InputError` with the reason (another run holds it, it holds a user's files,
    it cannot be created or written).
    """
    made = not folder.exists()
    make_folder(folder, "output directory")
    fresh = made or not os.listdir(folder)
    foreign = foreign_entries(folder)
    if foreign and not force:
        shown = ", ".join(repr(name) for name in foreign[:3]) + (" …" if len(foreign) > 3 else "")
        raise InputError(f"output folder {str(folder)!r} holds files that are not an hpcspec run ({shown}); "
                         "choose a new or empty folder, or add --force-output to write there anyway")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"output directory {str(folder)!r} is not writable")
    acquire(folder)
    try:
        if not (folder / RUN_MARKER).is_file():
            record = {"hpcspec": "run folder", "command": command, "created": timestamp()}
            write_text_atomic(folder / RUN_MARKER, json.dumps(record, sort_keys=True) + "\n")
        stale = remove_temporaries(folder)
    except WriteFailed as exc:
        release(folder)
        raise InputError(f"output directory {str(folder)!r} is not writable ({exc})") from None
    except BaseException:
        release(folder)
        raise
    if fresh:
        _FRESH[str(folder.resolve())] = made
    if stale:
        log.warning("removed %d unfinished write(s) left by a killed run in %s: %s", len(stale), folder,
                    ", ".join(stale))


@contextlib.contextmanager
def released_after(folder: Path | str) -> Iterator[None]:
    """Release ``folder``'s lock when the block (a job's whole body) ends, however it ends.

    A job that fails while the folder it claimed new or empty holds nothing but what the claim
    wrote (the run marker, the lock file, an empty ``checkpoints/``) leaves nothing behind: a run
    refused before it started does not leave an empty run folder with a lock in it.
    """
    folder = Path(folder)
    try:
        yield
    except BaseException:
        release(folder)
        _withdraw(folder)
        raise
    release(folder)
    if not is_held(folder):
        _FRESH.pop(str(folder.resolve()), None)


def _withdraw(folder: Path) -> None:
    """Remove what :func:`claim` wrote in a fresh ``folder`` (and the folder, if it made it),
    provided nothing else was written there since."""
    if is_held(folder):  # a sweep's outer job still holds it
        return
    made = _FRESH.pop(str(folder.resolve()), None)
    if made is None:
        return
    with contextlib.suppress(OSError):
        names = set(os.listdir(folder))
        checkpoints = folder / "checkpoints"
        if not names <= {RUN_MARKER, LOCK_FILE, "checkpoints"}:
            return
        if "checkpoints" in names:
            if checkpoints.is_symlink() or not checkpoints.is_dir() or os.listdir(checkpoints):
                return
            checkpoints.rmdir()
        for name in (RUN_MARKER, LOCK_FILE):
            (folder / name).unlink(missing_ok=True)
        if made:
            folder.rmdir()



