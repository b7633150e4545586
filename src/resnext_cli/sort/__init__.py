"""Sort classified images into folders: plan, journal, execute; resume and undo.

A sort never overwrites and never loses a file. The whole plan goes into a journal,
``DEST/.resnext-sort-journal.jsonl`` (JSON Lines), and is flushed to disk before the first
file is touched; each finished step then appends a ``done`` line. Every step publishes its
target atomically and without replacing anything (a hard link, or a copy made under a
temporary name and then linked), and a move removes its source only once the target is
complete. So after a crash the file system itself tells where each step stands, and
:func:`resume` finishes the plan while :func:`undo` puts every file back.

Journal lines, by ``op``: ``begin`` (a run: mode, time, ``dest``: DEST resolved, ``src``:
the source roots, resolved), ``step`` (n, mode, src absolute, dst relative to DEST, and
``size``/``mtime_ns`` when the file must still be the one a records file described),
``retarget`` (n, new dst, when a name was taken meanwhile), ``done`` (n), ``skip`` (n,
reason: the step left nothing behind), ``undone`` (n), ``end``. Every line carries
``mac``: an HMAC-SHA256, keyed by a per-user secret kept outside DEST
(``$XDG_CONFIG_HOME/resnext/journal.key``, made on first use, readable by its owner only),
over the line and the real path of DEST.

The journal is not trusted as it stands. Before anything acts on it, it must be a regular
file of the user running the sort, every line's MAC must prove it was written by this
tool, for this DEST, with this user's key on this machine (a journal arriving from an
archive, a synced or a cloned folder fails here), every ``begin`` must name the DEST it
lies in, and every step must take a file from inside its ``begin``'s source roots and put
it at ``folder/name`` inside DEST. A journal that fails one check is refused whole
(SortError, exit 2, naming the line) and nothing is touched. The last line may be torn by
a crash or a full disk: it is ignored, and cut away before the next line is appended; a
damaged line anywhere else is refused.

Each source belongs to a root: the file or folder the user named that holds it (``sources``
of :func:`make_plan`), else, for files named one by one (standard input), its own folder.
With ``--from RECORDS`` the roots are the ``--root`` folders (by default the folder that
holds RECORDS): a record naming a file outside them, a record without the ``size`` and
``mtime_ns`` that identify its file, and a file that is now a symbolic link or differs
from them are not filed. ``--move`` takes a file only when its real location, symbolic
links followed, is inside its root.

Sorting the same files into the same DEST again does not duplicate them: a file DEST's
journal says was filed from the same source into the same folder, still holding the same
bytes (or, without a journal entry, a file of the same name there with the same bytes), is
not filed again but listed in :attr:`FilingPlan.already`.

Exit status: a sort in which some inputs could not be classified still files them into
``_failed/``, and exits 1 as classify does: 1 means some inputs failed, filed or not.
"""

from __future__ import annotations

from resnext_cli.sort.apply import (
    OnStep,
    Outcome,
    dest_full_message,
    execute,
    preview_resume,
    preview_undo,
    resume,
    undo,
)
from resnext_cli.sort.journal import (
    Entry,
    Journal,
    Step,
    check_dest,
    journal_key,
    key_path,
    sign_line,
    unfinished,
    unfinished_message,
)
from resnext_cli.sort.names import (
    FAILED_FOLDER,
    JOURNAL_NAME,
    KEYS,
    MODES,
    UNCERTAIN_FOLDER,
    SortError,
    folder_for,
    numbered,
    safe_file_name,
    safe_name,
)
from resnext_cli.sort.plan import FilingPlan, make_plan, records_from_file, roots_for

__all__ = [
    "FAILED_FOLDER",
    "JOURNAL_NAME",
    "KEYS",
    "MODES",
    "UNCERTAIN_FOLDER",
    "Entry",
    "FilingPlan",
    "Journal",
    "OnStep",
    "Outcome",
    "SortError",
    "Step",
    "check_dest",
    "dest_full_message",
    "execute",
    "folder_for",
    "journal_key",
    "key_path",
    "make_plan",
    "numbered",
    "preview_resume",
    "preview_undo",
    "records_from_file",
    "resume",
    "roots_for",
    "safe_file_name",
    "safe_name",
    "sign_line",
    "undo",
    "unfinished",
    "unfinished_message",
]
