"""One `resnext sort`: check DEST, get records (classify, or --from a results file), file them.

The filing itself (names, journal, resume, undo) is the sort package's; this module decides
what a run does and says it on the console.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resnext_cli import reviewed
from resnext_cli import sort as sorting
from resnext_cli.console import Console, printable
from resnext_cli.errors import ConfigError, ExitStatus, Terminated
from resnext_cli.outputs.summary import RunSummary
from resnext_cli.results import Classified, Record
from resnext_cli.run.classify import NO_INPUT, classify_for_sort, print_summary
from resnext_cli.run.config import Config


@dataclass(frozen=True)
class SortRequest:
    """What the user asked sort to do."""

    paths: tuple[str, ...]
    mode: str = "copy"
    by: str = "label"
    records: str | None = None
    dry_run: bool = False
    resume: bool = False
    undo: bool = False
    min_probability: float | None = None
    report: str | None = None
    # With a reviewed file (--from): what to do with images not reviewed yet.
    unreviewed: str | None = None
    roots: tuple[str, ...] = ()  # --root: where files named by --from may be taken from


def _problems(outcome: sorting.Outcome, console: Console) -> int:
    """Say each file that could not be handled; 1 when there was one."""
    for step, problem in outcome.problems:
        console.error(f"'{step.source}': {problem}")
    return ExitStatus.SOME_FAILED if outcome.problems else ExitStatus.OK


def _finish(outcome: sorting.Outcome, dest: Path, console: Console, *, verb: str) -> int:
    """Say what a sort or resume did; 1 when some file could not be handled."""
    status = _problems(outcome, console)
    console.note(f"{verb} {len(outcome.done)} files into {outcome.folders} folders in '{dest}'")
    return status


def _undone(outcome: sorting.Outcome, dest: Path, console: Console) -> int:
    """Say what an undo did: files put back (a move), copies or links removed."""
    status = _problems(outcome, console)
    parts = []
    if outcome.restored:
        parts.append(f"put back {len(outcome.restored)} files")
    for mode, noun in (("copy", "copies"), ("link", "links")):
        n = sum(1 for step in outcome.removed if step.mode == mode)
        if n:
            parts.append(f"removed {n} {noun}")
    console.note(f"{', '.join(parts) or 'nothing to undo'} from '{dest}'")
    return status


def _resume_or_undo(request: SortRequest, console: Console) -> int:
    if request.resume and request.undo:
        raise ConfigError("give --resume or --undo, not both")
    flag = "--undo" if request.undo else "--resume"
    if len(request.paths) != 1:
        raise ConfigError(f"{flag} takes only DEST")
    if request.records is not None or request.roots:
        raise ConfigError(f"{flag} takes only DEST (the journal says where the files came from)")
    dest = Path(request.paths[0])
    if request.dry_run:  # the steps it would take; nothing is touched, not even the journal
        if request.undo:
            for action, there, back in sorting.preview_undo(dest):
                where = f" -> {printable(str(back))}" if action == "put back" else ""
                console.stdout.write(f"{action} {printable(str(there))}{where}\n")
        else:
            for mode, source, target in sorting.preview_resume(dest):
                console.stdout.write(
                    f"{mode} {printable(str(source))} -> {printable(str(target))}\n"
                )
        return ExitStatus.OK
    if request.undo:
        return _undone(sorting.undo(dest), dest, console)
    return _finish(sorting.resume(dest), dest, console, verb="finished")


def _check_categories(records: list[Record], path: str) -> None:
    """--by category with --from: every classified record must carry its categories."""
    for record in records:
        if isinstance(record, Classified) and not record.categories:
            raise ConfigError(
                f"--by category needs records with categories, and '{printable(record.input)}' "
                f"in '{path}' has none (classify with --categories, or sort with --by label)"
            )


def _records(
    request: SortRequest, config: Config | None, console: Console
) -> tuple[list[Record], RunSummary | None, tuple[str, ...], Path] | None:
    """The records to file, the summary of classifying them (None with --from), SRC, DEST."""
    if request.records is not None:
        if not request.paths:
            raise ConfigError(
                "--from RECORDS needs DEST, the folder to sort into "
                f"(resnext sort --from {request.records} DEST)"
            )
        if len(request.paths) != 1:
            raise ConfigError("with --from RECORDS, give only DEST")
        if request.report is not None:
            raise ConfigError(
                "--report is written while classifying; with --from, use the classify run's"
            )
        dest = Path(request.paths[0])
        sorting.check_dest(dest)
        records, changed = sorting.records_from_file(Path(request.records))
        _check_review(request, records)
        if request.by == "category":
            _check_categories(records, request.records)
        for name, reason in changed:
            console.warn(f"not sorted: '{name}': {reason}")
        # Files a records file names are taken only from the --root folders (by default the
        # folder that holds the records file).
        roots = request.roots or (str(Path(request.records).absolute().parent),)
        return records, None, roots, dest
    if request.unreviewed is not None:
        raise ConfigError("--unreviewed is for a reviewed file: give it with --from RECORDS")
    if request.roots:
        raise ConfigError("--root goes with --from RECORDS (SRC names the folders otherwise)")
    if len(request.paths) < 2:
        raise ConfigError("give the images to sort and then DEST")
    inputs, dest = request.paths[:-1], Path(request.paths[-1])
    sorting.check_dest(dest)
    if config is None:
        raise ConfigError("sorting SRC classifies it: give the model's options")
    done = classify_for_sort(
        config,
        inputs,
        console,
        min_probability=request.min_probability,
        report=request.report,
        skip=dest,
    )
    if done is None:
        return None
    records, summary = done
    return records, summary, inputs, dest


def _check_review(request: SortRequest, records: list[Record]) -> None:
    """Refuse unreviewed images (but with --unreviewed model) and options a review overrides."""
    pending = reviewed.unreviewed(records)
    if pending is None:
        return  # a classify run's records: filed by the model's top-1, as ever
    if request.by != "label":
        raise ConfigError(
            f"a reviewed file is filed by its labels; --by {request.by} does not apply "
            "(leave out --by)"
        )
    if request.min_probability is not None:
        raise ConfigError(
            "a reviewed file is filed by its labels; --min-probability does not apply "
            "(leave it out)"
        )
    if pending and request.unreviewed != "model":
        raise sorting.SortError(
            f"'{request.records}' has {len(pending)} images not reviewed yet (the first: "
            f"'{pending[0].input}'); review them in the report and export again, or give "
            "--unreviewed model to file them by the model's top-1"
        )


def run_sort(request: SortRequest, config: Config | None, console: Console) -> int:
    """Run one sort as *request* says; return the exit status.

    *config* is the model's, for classifying SRC; None with --from, --resume or --undo.
    """
    if request.resume or request.undo:
        return _resume_or_undo(request, console)
    got = _records(request, config, console)
    if got is None:
        console.error(NO_INPUT)
        return ExitStatus.USAGE
    records, summary, inputs, dest = got
    from_file = request.records is not None
    plan = sorting.make_plan(
        records,
        dest,
        mode=request.mode,
        by=request.by,
        sources=list(inputs) or None,
        min_probability=request.min_probability,
        strict=from_file,
    )
    for name, reason in plan.skipped:
        console.warn(f"not sorted: '{name}': {printable(reason)}")
    status = summary.exit_status if summary is not None else ExitStatus.OK
    if from_file and not plan.steps and not plan.already:
        console.error(
            f"nothing could be filed from '{request.records}' (every record was skipped; see above)"
        )
        return ExitStatus.SOME_FAILED
    if plan.already:
        console.note(f"{len(plan.already)} files already in '{dest}' (skipped)")
    if request.dry_run or not plan.steps:
        for step in plan.steps:
            target = printable(str(dest / step.target))
            console.stdout.write(f"{request.mode} {printable(step.input)} -> {target}\n")
        if summary is not None:
            print_summary(summary, console, report=request.report)
        return status
    try:
        outcome = sorting.execute(plan)
    except (KeyboardInterrupt, Terminated):
        console.say(f"interrupted: {sorting.unfinished_message(dest)}", style="yellow")
        raise
    if summary is not None:
        print_summary(summary, console, report=request.report)
    verb = {"copy": "copied", "link": "linked", "move": "moved"}[request.mode]
    return max(status, _finish(outcome, dest, console, verb=verb))
