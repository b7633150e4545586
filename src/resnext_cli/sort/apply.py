"""Carrying out a sort, and finishing (resume) or rolling back (undo) an interrupted one."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from resnext_cli.files import CLOEXEC, NOFOLLOW, NONBLOCK, same_node
from resnext_cli.sort.journal import (
    Entry,
    Journal,
    Step,
    _canonical,
    _inside,
    _pending,
    unfinished_message,
)
from resnext_cli.sort.names import JOURNAL_NAME, SortError, _key, numbered
from resnext_cli.sort.plan import FilingPlan, _same_content

OnStep = Callable[[Step], None]


@dataclass
class Outcome:
    """What a sort, resume or undo did.

    ``mode`` tells a copy or link sort from a move. For an undo, ``done`` holds every
    step undone; of them, ``restored`` are files put back
    where they were (a move undone, or a copy's original that was gone) and ``removed`` are
    copies and links deleted from DEST while their originals stayed.
    """

    done: list[Step] = field(default_factory=list)
    problems: list[tuple[Step, str]] = field(default_factory=list)
    restored: list[Step] = field(default_factory=list)
    removed: list[Step] = field(default_factory=list)

    @property
    def mode(self) -> str:
        """'copy', 'link' or 'move' when every step handled had it, 'mixed', or '' (none)."""
        modes = {step.mode for step in self.done} | {step.mode for step, _ in self.problems}
        return modes.pop() if len(modes) == 1 else "mixed" if modes else ""

    @property
    def folders(self) -> int:
        """How many folders received files."""
        return len({_key(step.folder) for step in self.done})


class _Refused(Exception):
    """A step the file system no longer lets us do safely; left as it is."""


# Why a hard link may be refused where a copy would work: another file system, one without
# links (FAT, some network shares), a hardened kernel (protected_hardlinks), a link limit.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


def _partial(target: Path, n: int) -> Path:
    return target.parent / f".resnext-part-{n}"


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _open_source(step: Step, source: Path) -> int:
    """Open *source* to read: a regular file (never a FIFO or a device swapped in), and for
    a step with an identity not through a link and still that size and time."""
    strict = step.identity is not None
    try:
        fd = os.open(source, os.O_RDONLY | NONBLOCK | CLOEXEC | (NOFOLLOW if strict else 0))
    except OSError as exc:
        if strict and exc.errno == errno.ELOOP:
            raise _Refused(_not_the_file(source)) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (strict and (st.st_size, st.st_mtime_ns) != step.identity):
        os.close(fd)
        raise _Refused(_not_the_file(source))
    return fd


def _not_the_file(source: Path) -> str:
    return (
        f"'{source}' is not the file that was classified (a symbolic link now, or changed "
        "since); left alone"
    )


def _check_identity(step: Step, source: Path) -> os.stat_result | None:
    """For a step with an identity: the file's lstat, or _Refused when it is not that file.
    Without one there is nothing to compare: a file or a link passes, never a FIFO."""
    st = os.lstat(source)
    if step.identity is None:
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise _Refused(_not_the_file(source))
        return None
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != step.identity:
        raise _Refused(_not_the_file(source))
    return st


def _new_temp(temp: Path) -> int:
    """Create *temp* exclusively and never through a link (a stale one of ours goes first)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
    try:
        return os.open(temp, flags, 0o600)
    except FileExistsError:
        os.unlink(temp)  # our own name, left by a crash: a link planted there goes too
        return os.open(temp, flags, 0o600)


def _publish_copy(source: Path, target: Path, n: int, step: Step | None = None) -> None:
    """Copy *source* to *target* so that *target* appears complete or not at all."""
    temp = _partial(target, n)
    src_fd = _open_source(step, source) if step is not None else os.open(source, os.O_RDONLY)
    try:
        out_fd = _new_temp(temp)
        try:
            with os.fdopen(src_fd, "rb", closefd=False) as src, os.fdopen(out_fd, "wb") as out:
                shutil.copyfileobj(src, out)
                out.flush()
                # Times and mode through the open file, never by name: in a DEST others
                # can write to, the name may lead somewhere else by now.
                st = os.fstat(src_fd)
                os.utime(out.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
                with contextlib.suppress(OSError):
                    os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
                os.fsync(out.fileno())
                written = os.fstat(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
    finally:
        os.close(src_fd)
    try:
        os.link(temp, target)  # fails rather than replace an existing file
    except FileExistsError:
        temp.unlink()
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            temp.unlink()
            raise
        # A file system without hard links: check, then rename (a narrow race, no link).
        if os.path.lexists(target):
            temp.unlink()
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        if not same_node(written, os.lstat(temp)):
            temp.unlink()
            raise _Refused(_swapped(temp)) from None
        os.rename(temp, target)
    else:
        temp.unlink()
    if not same_node(written, os.lstat(target)):  # the name was swapped before the link
        target.unlink()
        raise _Refused(_swapped(temp))


def _swapped(temp: Path) -> str:
    return f"the copy being written at '{temp}' was replaced by someone else; nothing was filed"


def _place(step: Step, source: Path, target: Path) -> None:
    """Put *source* at *target* as the step's mode says; raise FileExistsError on a clash."""
    target.parent.mkdir(exist_ok=True)  # in DEST, which holds the journal
    if step.mode == "copy":
        _publish_copy(source, target, step.n, step)
        return
    seen = _check_identity(step, source)
    if step.mode == "link":
        try:
            os.link(source, target, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_LINK or seen is not None:
                raise
            os.symlink(source, target)
        _same_file_or_undo(seen, target)
        return
    # move: link the target, then drop the source; a copy where links cannot be made.
    if source.is_symlink():
        if seen is not None:
            raise _Refused(_not_the_file(source))
        os.symlink(os.path.realpath(source), target)
    else:
        try:
            os.link(source, target, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            _publish_copy(source, target, step.n, step)
        else:
            _same_file_or_undo(seen, target)
    try:
        source.unlink()
    except OSError:
        target.unlink()  # leave things as they were rather than hold the file twice
        raise


def _same_file_or_undo(seen: os.stat_result | None, target: Path) -> None:
    """After linking a checked file: the link must be that file (not one swapped in since)."""
    if seen is None:
        return
    if not same_node(seen, os.lstat(target)):
        target.unlink()
        raise _Refused(f"'{target}' is not the file that was classified; left alone")


def _placed(step: Step, source: Path, target: Path) -> bool:
    """Whether *target*, which exists, already is this step's result (after a crash)."""
    if step.mode == "link" and target.is_symlink():
        return os.readlink(target) == str(source)
    return _same_content(source, target)


def _free_name(root: Path, target: str) -> str:
    folder, _, name = target.partition("/")
    taken = {_key(n) for n in os.listdir(root / folder)}  # it holds the name just taken
    number = 1
    while _key(numbered(name, number)) in taken:
        number += 1
    return f"{folder}/{numbered(name, number)}"


def _check_places(step: Step, root: Path) -> None:
    """Refuse a step whose source or target now leads out of its root (a link changed)."""
    home = step.home if step.home is not None else _canonical(step.source).parent
    if not _inside(_canonical(step.source), home):
        raise _Refused(f"'{step.source}' now leads outside '{home}' (a symbolic link); left alone")
    if not _inside((root / step.target).parent.resolve(), root):
        raise _Refused(f"'{step.target}' now leads outside '{root}'; left alone")


def _run_step(journal: Journal, root: Path, step: Step) -> Step:
    """Do one step, or finish it after a crash; return it with its final target."""
    _check_places(step, root)
    with contextlib.suppress(FileNotFoundError):
        _partial(root / step.target, step.n).unlink()  # a copy cut short by a crash
    for _ in range(1000):
        target = root / step.target
        _check_places(step, root)
        if step.mode == "move" and not os.path.lexists(step.source):
            if os.path.lexists(target):
                return step  # moved before the crash
            raise FileNotFoundError(errno.ENOENT, "source is gone", str(step.source))
        if os.path.lexists(target):
            if _placed(step, step.source, target):
                if step.mode == "move":
                    step.source.unlink()  # the crash came between link and unlink
                return step
        else:
            try:
                _place(step, step.source, target)
                return step
            except FileExistsError:
                pass
        # Someone else took the name since it was planned: pick another, say so first.
        step = replace(step, target=_free_name(root, step.target))
        journal.write({"op": "retarget", "n": step.n, "dst": step.target}, sync=True)
    raise SortError(f"no free name for '{step.target}'")


def _reason(exc: OSError) -> str:
    return f"{exc.strerror or exc}: '{exc.filename}'" if exc.filename else str(exc)


def dest_full_message(dest: Path, reason: str) -> str:
    return (
        f"destination '{dest}' is full ({reason}): the files not filed yet stay where they "
        f"are (free space, then 'resnext sort --resume {dest}', or 'resnext sort --undo "
        f"{dest}' to put back what was filed)"
    )


def _execute(
    journal: Journal, root: Path, steps: Iterable[Step], on_step: OnStep | None
) -> Outcome:
    outcome = Outcome()
    for step in steps:
        try:
            final = _run_step(journal, root, step)
        except OSError as exc:
            if exc.errno in _FULL:
                # Nothing more can be filed: the step stays pending for --resume.
                raise SortError(
                    dest_full_message(journal.dest, (exc.strerror or str(exc)).lower())
                ) from None
            reason = _reason(exc)
            journal.note({"op": "skip", "n": step.n, "reason": reason})
            outcome.problems.append((step, reason))
        except _Refused as exc:
            journal.note({"op": "skip", "n": step.n, "reason": str(exc)})
            outcome.problems.append((step, str(exc)))
        else:
            journal.note({"op": "done", "n": step.n})
            outcome.done.append(final)
        if on_step is not None:
            on_step(step)
    return outcome


@contextlib.contextmanager
def _journal(dest: Path) -> Iterator[tuple[Journal, dict[int, Entry]]]:
    journal = Journal(dest)
    entries = journal.open()
    try:
        yield journal, entries
    finally:
        journal.close()


def execute(plan: FilingPlan, *, on_step: OnStep | None = None) -> Outcome:
    """Carry out a plan: journal every step (on disk first), then do them in order."""
    with _journal(plan.dest) as (journal, entries):
        if _pending(entries):
            raise SortError(unfinished_message(plan.dest))
        root = plan.dest.resolve()
        # Numbered after the journal as it is now: another sort may have run since planning.
        first = max(entries) + 1 if entries else 0
        steps = [
            replace(s, n=first + i, home=s.home or _canonical(s.source).parent)
            for i, s in enumerate(plan.steps)
        ]
        for step in steps:
            if step.home is None or not _inside(step.source, step.home):
                raise ValueError(f"step source '{step.source}' is outside its root")
        journal.write(
            {
                "op": "begin",
                "mode": plan.mode,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "dest": str(root),
                "src": sorted({str(s.home) for s in steps}),
            },
            *(
                {
                    "op": "step",
                    "n": s.n,
                    "mode": s.mode,
                    "src": str(s.source),
                    "dst": s.target,
                    "input": s.input,
                    **(
                        {"size": s.identity[0], "mtime_ns": s.identity[1]}
                        if s.identity is not None
                        else {}
                    ),
                }
                for s in steps
            ),
            sync=True,
        )
        outcome = _execute(journal, root, steps, on_step)
        journal.note({"op": "end"})
    return outcome


def resume(dest: Path, *, on_step: OnStep | None = None) -> Outcome:
    """Finish the steps an interrupted sort into *dest* left undone."""
    if not (dest / JOURNAL_NAME).is_file():
        raise SortError(f"'{dest}' has no sort journal (nothing to resume)")
    with _journal(dest) as (journal, entries):
        outcome = _execute(journal, dest.resolve(), _pending(entries), on_step)
        journal.note({"op": "end"})
    return outcome


def _journal_entries(dest: Path, what: str) -> dict[int, Entry]:
    if not (dest / JOURNAL_NAME).is_file():
        raise SortError(f"'{dest}' has no sort journal (nothing to {what})")
    return Journal(dest).read()  # checked whole, as for the real thing; nothing written


def preview_resume(dest: Path) -> list[tuple[str, Path, Path]]:
    """What :func:`resume` would do, as (mode, from, to); touches nothing."""
    root = dest.resolve()
    return [(s.mode, s.source, root / s.target) for s in _pending(_journal_entries(dest, "resume"))]


def preview_undo(dest: Path) -> list[tuple[str, Path, Path]]:
    """What :func:`undo` would do, newest first, as (action, in DEST, original); touches nothing.

    The action is 'put back' for a moved file and 'remove' for a copy or link.
    """
    root = dest.resolve()
    entries = _journal_entries(dest, "undo")
    todo = [e for e in entries.values() if not (e.undone or e.skipped)]
    out = []
    for entry in sorted(todo, key=lambda e: e.step.n, reverse=True):
        step = entry.step
        target = root / step.target
        if not os.path.lexists(target):
            continue  # never placed, or already put back: nothing to do
        back = os.path.lexists(step.source)
        action = "put back" if step.mode == "move" or not back else "remove"
        out.append((action, target, step.source))
    return out


def _put_back(step: Step, root: Path) -> Literal["restored", "removed", "absent"]:
    """Undo one step: 'restored', 'removed' or 'absent'; raise _Refused when it cannot."""
    _check_places(step, root)
    source, target = step.source, root / step.target
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # no folder, no partial
        _partial(source, step.n).unlink()
    there = os.path.lexists(target)
    back = os.path.lexists(source)
    if not there:
        if step.mode == "move" and not back:
            raise _Refused(
                f"'{step.target}' is no longer in '{root}' (renamed or deleted there?); "
                "cannot put it back"
            )
        return "absent"  # never placed, already put back, or a copy deleted since
    kept = f"'{source}' exists and differs from '{step.target}'; kept both"
    if step.mode == "link" and target.is_symlink():
        if os.readlink(target) != str(source):
            raise _Refused(kept)
        target.unlink()  # a symbolic link holds no data: removing it loses nothing
        return "removed"
    if back:
        if not _placed(step, source, target):
            raise _Refused(kept)
        target.unlink()
        return "restored" if step.mode == "move" else "removed"
    # The source is gone (moved, or deleted since a copy): bring the file back.
    source.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        os.symlink(os.readlink(target), source)
    else:
        try:
            os.link(target, source, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            _publish_copy(target, source, step.n)
    target.unlink()
    return "restored"


def undo(dest: Path, *, on_step: OnStep | None = None) -> Outcome:
    """Put every file the journal placed in *dest* back where it came from, newest first.

    Copies and links are removed (when the original is still there and the same), moved
    files go back. A file that cannot be put back (renamed or deleted in DEST, or its old
    place taken) is a problem and keeps its journal entry; when everything is back the
    journal is removed, and so are folders the sort made that are now empty.
    """
    if not (dest / JOURNAL_NAME).is_file():
        raise SortError(f"'{dest}' has no sort journal (nothing to undo)")
    root = dest.resolve()
    outcome = Outcome()
    with _journal(dest) as (journal, entries):
        todo = [e for e in entries.values() if not (e.undone or e.skipped)]
        for entry in sorted(todo, key=lambda e: e.step.n, reverse=True):
            step = entry.step
            try:
                action = _put_back(step, root)
            except OSError as exc:
                outcome.problems.append((step, _reason(exc)))
                continue
            except _Refused as exc:
                outcome.problems.append((step, str(exc)))
                continue
            journal.note({"op": "undone", "n": step.n})  # freed first: works on a full disk
            outcome.done.append(step)
            if action == "restored":
                outcome.restored.append(step)
            elif action == "removed":
                outcome.removed.append(step)
            if on_step is not None:
                on_step(step)
        if not outcome.problems:
            journal.path.unlink()
            for folder in sorted({s.folder for s in outcome.done}):
                with contextlib.suppress(OSError):
                    (root / folder).rmdir()
    return outcome
