"""The read-side subcommands of `mlevents`: project (run the built-in projections), dead-letters,
models, trainings and deployments (live or --as-of), and lineage, impact and explain.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import event_sourcing as es
from event_sourcing.cli import render
from event_sourcing.cli.common import (
    CommandLineError,
    add_json_argument,
    add_url_argument,
    did_you_mean,
    empty_store_note,
    human_output,
    non_negative_int,
    note,
    open_store,
    parse_iso_datetime,
    positive_float,
    print_json_line,
    progress_bar,
    set_handler,
    stdout_console,
)
from event_sourcing.projections import (
    DEFAULT_INFERENCE_WINDOW,
    DeadLetter,
    Projection,
    ProjectionRunner,
    Queryable,
    RunStats,
    as_of,
    builtin_projections,
    list_deployments,
    list_models,
    list_trainings,
)
from event_sourcing.provenance import (
    LineageGraph,
    ProvenanceError,
    build_graph,
    explain,
    impact,
    lineage,
)

FORMATS = ("tree", "json", "mermaid", "openlineage")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add project, dead-letters, models, trainings, deployments, lineage, impact, explain."""
    project = subparsers.add_parser(
        "project", help="catch the built-in read models up with the log",
        description=cmd_project.__doc__,
    )
    add_url_argument(project)
    project.add_argument("--rebuild", metavar="NAME", help="drop read model NAME and replay it")
    project.add_argument("--follow", action="store_true", help="keep projecting new events")
    project.add_argument(
        "--poll-interval", type=positive_float, default=1.0, metavar="SECONDS",
        help="with --follow: seconds between polls (default 1)",
    )
    project.add_argument(
        "--max-idle", type=positive_float, metavar="SECONDS",
        help="with --follow: stop after this long without new events",
    )
    project.add_argument("--batch-size", type=non_negative_int, default=500, metavar="N")
    project.add_argument(
        "--inference-window", type=non_negative_int, default=DEFAULT_INFERENCE_WINDOW,
        metavar="N", help="feedback events in inference_quality's rolling window (default 100)",
    )
    add_json_argument(project)
    set_handler(project, cmd_project)

    dead = subparsers.add_parser(
        "dead-letters", help="list (or retry) events the projections parked",
        description=cmd_dead_letters.__doc__,
    )
    add_url_argument(dead)
    dead.add_argument("--projection", metavar="NAME", help="only this projection's")
    retry = dead.add_mutually_exclusive_group()
    retry.add_argument(
        "--retry", action="append", metavar="EVENT_ID",
        help="re-apply this parked event (an id or a unique prefix; repeat for several)",
    )
    retry.add_argument("--all", action="store_true", help="re-apply every parked event")
    add_json_argument(dead)
    set_handler(dead, cmd_dead_letters)

    for name, handler, extra in (
        ("models", cmd_models, _model_options),
        ("trainings", cmd_trainings, _training_options),
        ("deployments", cmd_deployments, _deployment_options),
    ):
        parser = subparsers.add_parser(
            name, help=f"list {name}, now or --as-of a time or position",
            description=handler.__doc__,
        )
        add_url_argument(parser)
        parser.add_argument(
            "--as-of", metavar="POSITION|ISO",
            help="as the log stood at a global position (e.g. 120), or as things stood at a "
            "time by when they occurred (business time; ISO 8601 with zone, e.g. "
            "2026-11-24T14:02:00Z)",
        )
        parser.add_argument(
            "--known-at", metavar="ISO",
            help="with --as-of TIME: only what had been recorded by this time (what the log "
            "said then about --as-of; ISO 8601 with zone)",
        )
        extra(parser)
        add_json_argument(parser)
        set_handler(parser, handler)

    for name, handler, target in (
        ("lineage", cmd_lineage, "MODEL"),
        ("impact", cmd_impact, "DATASET_VERSION"),
        ("explain", cmd_explain, "INFERENCE_ID"),
    ):
        parser = subparsers.add_parser(
            name, help=(handler.__doc__ or "").splitlines()[0], description=handler.__doc__
        )
        parser.add_argument("target", metavar=target)
        add_url_argument(parser)
        parser.add_argument(
            "--format", choices=FORMATS,
            help="tree (text; the default on a terminal), json (nodes and edges; the default "
            "otherwise), mermaid (flowchart) or openlineage (run events)",
        )
        parser.add_argument("--json", action="store_true", help="the same as --format json")
        set_handler(parser, handler)


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="only models of this name")
    parser.add_argument("--status", choices=("ready", "deployed", "retired"))


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=("running", "completed", "failed"))


def _deployment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="only deployments of this model name")
    parser.add_argument("--environment", help="only this environment, e.g. production")
    parser.add_argument("--active", action="store_true", help="only deployments still serving")


# -- projections ------------------------------------------------------------------------------


def cmd_project(args: argparse.Namespace) -> int:
    """Run the built-in projections (training_summaries, model_catalog, model_provenance,
    deployments, inference_quality) up to the head of the log and print, per projection,
    events read, applied and parked, checkpoint, lag and dead letters (a table on a terminal,
    else one JSON line each)."""
    if args.batch_size < 1 or args.inference_window < 1:
        raise es.EventStoreError("--batch-size and --inference-window must be >= 1")
    with open_store(args) as store:
        runner = ProjectionRunner(store, builtin_projections(args.inference_window))
        if args.rebuild:
            _check_projection(runner, args.rebuild, "--rebuild")
            rebuilt = _rebuild_with_progress(runner, args.rebuild, args.batch_size)
            stats = {
                name: runner.run(name, args.batch_size)[name]
                for name in runner.projections
                if name != args.rebuild
            }
            stats[args.rebuild] = rebuilt
        elif args.follow:
            try:
                stats = runner.follow(
                    args.poll_interval, max_idle=args.max_idle, batch_size=args.batch_size
                )
            except KeyboardInterrupt:
                stats = {}
        else:
            stats = runner.run(batch_size=args.batch_size)
        lines = []
        for status in runner.status():
            run = stats.get(status.name)
            line: dict[str, Any] = {"projection": status.name}
            if run is not None:
                line.update(read=run.read, applied=run.applied, parked=run.parked,
                            rebuilt=run.rebuilt)
            line.update(checkpoint=status.checkpoint, lag=status.lag,
                        dead_letters=status.dead_letters)
            lines.append(line)
    if human_output(args):
        render.print_table(stdout_console(), lines, render.PROJECTION_COLUMNS)
    else:
        for line in lines:
            print_json_line(line)
    parked = sum(line["dead_letters"] for line in lines)
    if parked:
        note(
            f"warning: {parked} event(s) are parked in projection_dead_letters; see why with "
            "`mlevents dead-letters`, fix the cause, then `mlevents dead-letters --all` "
            "retries them (or --rebuild the projection)"
        )
    return 0


def _check_projection(runner: ProjectionRunner, name: str, option: str) -> None:
    if name not in runner.projections:
        known = sorted(runner.projections)
        raise CommandLineError(
            f"{option}: no projection named {name!r}{did_you_mean(name, known)} "
            f"(known: {', '.join(known)})"
        )


def _rebuild_with_progress(runner: ProjectionRunner, name: str, batch_size: int) -> RunStats:
    """runner.rebuild, with a progress bar (positions replayed of the head) on a terminal."""
    with progress_bar(f"rebuilding {name}", runner.store.head_position()) as advance_to:
        return runner.rebuild(name, batch_size, progress=lambda stats: advance_to(stats.checkpoint))


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """List the events projections parked after their handler kept failing (with the error),
    or re-apply them: --retry EVENT_ID (repeatable) or --all, after catching the projection up
    with the log. A retried event that succeeds leaves the list; one that fails again stays,
    with its new error (exit status 1)."""
    with open_store(args) as store:
        runner = ProjectionRunner(store, builtin_projections())
        if args.projection is not None:
            _check_projection(runner, args.projection, "--projection")
        letters = runner.dead_letters(args.projection)
        if args.retry or args.all:
            chosen = letters if args.all else _chosen_letters(letters, args.retry)
            by_projection: dict[str, set[str]] = {}
            for letter in chosen:
                by_projection.setdefault(letter.projection, set()).add(letter.event_id)
            results = []
            for name, ids in sorted(by_projection.items()):
                runner.run(name)  # later events (the fix, often) first, as they would be
                results.append(runner.retry_dead_letters(name, event_ids=ids))
            for result in results:
                if human_output(args):
                    print(
                        f"{result.projection}: retried {result.retried}, applied "
                        f"{result.applied}, still failing {result.failed}"
                    )
                else:
                    print_json_line(result.to_dict())
            if not results:
                note("no dead letters to retry")
            return 1 if any(result.failed for result in results) else 0
    if not letters:
        where = f" for {args.projection}" if args.projection else ""
        note(f"no dead letters{where}: every event was applied")
        return 0
    if human_output(args):
        render.print_table(
            stdout_console(), [letter.to_dict() for letter in letters],
            render.DEAD_LETTER_COLUMNS,
        )
        note("retry one with --retry EVENT_ID, all with --all; --json shows the tracebacks")
    else:
        for letter in letters:
            print_json_line(letter.to_dict())
    return 0


def _chosen_letters(letters: list[DeadLetter], wanted: list[str]) -> list[DeadLetter]:
    """The dead letters named by full event ids or unique prefixes of them."""
    chosen = []
    for text in wanted:
        found = [letter for letter in letters if letter.event_id.startswith(text)]
        ids = {letter.event_id for letter in found}
        if not found:
            # (in the order `mlevents dead-letters` lists them: ids of one millisecond, UUIDv7s,
            # do not sort in the order they were recorded)
            parked = ", ".join(list(dict.fromkeys(x.event_id for x in letters))[:5]) or "none"
            raise CommandLineError(
                f"no dead letter for event {text!r}; parked event ids: {parked} "
                "(`mlevents dead-letters` lists them)"
            )
        if len(ids) > 1 and text not in ids:
            raise CommandLineError(
                f"event id prefix {text!r} is ambiguous ({', '.join(sorted(ids))}); give more"
            )
        chosen.extend(found)
    return chosen


def _as_of(text: str) -> datetime | int:
    if text.isdigit():
        return int(text)
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise CommandLineError(
            f"--as-of {text!r} is neither a global position (an integer >= 0, e.g. 120) nor "
            "an ISO 8601 time with a timezone (e.g. 2026-11-24T14:02:00Z)"
        ) from None
    return parse_iso_datetime(text, "--as-of")


def _read_model(
    args: argparse.Namespace,
    name: str,
    query: Callable[[es.EventStore | Queryable], list[Any]],
    columns: list[render.Column],
    check: Callable[[list[dict[str, Any]], str], None],
) -> int:
    """Print `query` over read model `name`: caught up live, or evaluated --as-of.

    `check(all_rows, when)` raises on a filter naming nothing known (a typo) before printing.
    """
    projection: Projection = next(p for p in builtin_projections() if p.name == name)
    at = None if args.as_of is None else _as_of(args.as_of)
    known_at = None if args.known_at is None else parse_iso_datetime(args.known_at, "--known-at")
    if known_at is not None and not isinstance(at, datetime):
        raise CommandLineError(
            "--known-at goes with --as-of TIME (a time, not a position): e.g. --as-of "
            "2024-06-01T00:00:00Z --known-at 2024-07-01T00:00:00Z"
        )
    filtered = any(getattr(args, o, None) for o in ("name", "status", "environment", "active"))

    def both(source: es.EventStore | Queryable) -> tuple[list[Any], list[Any]]:
        rows = query(source)
        return (list_all(source, name) if filtered else rows), rows

    with open_store(args) as store:
        if at is None:
            ProjectionRunner(store, [projection]).run()
            (every, rows), moment = both(store), ""
        else:
            with as_of(store, projection, at, known_at=known_at) as snapshot:
                every, rows = both(snapshot)
            moment = f" as of {'position ' if isinstance(at, int) else ''}{args.as_of}"
            if known_at is not None:
                moment += f" as known at {args.known_at}"
        check(every, moment)
        if not rows and not empty_store_note(store):
            what = {"model_catalog": "models", "training_summaries": "training runs"}.get(
                name, name
            )
            if every:
                note(f"no {what} match these filters{moment} ({len(every)} without them)")
            else:
                note(f"no {what}{moment} yet")
    if human_output(args):
        if rows:
            render.print_table(stdout_console(), rows, columns)
    else:
        for row in rows:
            print_json_line(row)
    return 0


def list_all(source: es.EventStore | Queryable, name: str) -> list[dict[str, Any]]:
    """Every row of a built-in listing read model, unfiltered (for did-you-mean hints)."""
    if name == "model_catalog":
        return list_models(source)
    if name == "training_summaries":
        return list_trainings(source)
    return list_deployments(source)


def _known(wanted: str | None, option: str, rows: list[dict[str, Any]], key: str,
           moment: str) -> None:
    """Refuse `option wanted` when no row has it in `key`: a hint lists the known values."""
    if wanted is None:
        return
    known = sorted({str(row[key]) for row in rows if row.get(key) is not None})
    if wanted in known:
        return
    listed = f"known: {', '.join(known)}" if known else "there are none yet"
    raise CommandLineError(
        f"no {option} {wanted!r}{moment}{did_you_mean(wanted, known)} ({listed})"
    )


def cmd_models(args: argparse.Namespace) -> int:
    """List the model catalog (name, version, status, where it serves, metrics), now or
    --as-of a position or time: a table on a terminal, else one JSON line per model."""
    return _read_model(
        args, "model_catalog", lambda src: list_models(src, name=args.name, status=args.status),
        render.MODEL_COLUMNS,
        lambda rows, moment: _known(args.name, "model named", rows, "name", moment),
    )


def cmd_trainings(args: argparse.Namespace) -> int:
    """List training runs (status, times, metrics), now or --as-of a position or time: a
    table on a terminal, else one JSON line per run."""
    return _read_model(
        args, "training_summaries", lambda src: list_trainings(src, status=args.status),
        render.TRAINING_COLUMNS, lambda rows, moment: None,
    )


def cmd_deployments(args: argparse.Namespace) -> int:
    """List the serving history (what served where, from when to when), now or --as-of a
    position or time: a table on a terminal, else one JSON line per deployment."""

    def check(rows: list[dict[str, Any]], moment: str) -> None:
        _known(args.name, "deployed model named", rows, "model_name", moment)
        _known(args.environment, "environment", rows, "environment", moment)

    return _read_model(
        args,
        "deployments",
        lambda src: list_deployments(
            src, model_name=args.name, environment=args.environment, active_only=args.active
        ),
        render.DEPLOYMENT_COLUMNS,
        check,
    )


# -- provenance -------------------------------------------------------------------------------


def _print_graph(graph: LineageGraph, args: argparse.Namespace) -> int:
    fmt = args.format or ("json" if args.json or not sys.stdout.isatty() else "tree")
    if args.json and args.format not in (None, "json"):
        raise CommandLineError(f"--json and --format {args.format} disagree; give one")
    if fmt == "tree" and sys.stdout.isatty():
        stdout_console().print(render.graph_tree(graph))
    elif fmt == "tree":
        sys.stdout.write(render.graph_text(graph))
    elif fmt == "mermaid":
        sys.stdout.write(graph.to_mermaid())
    elif fmt == "openlineage":
        for event in graph.to_openlineage():
            print_json_line(event)
    else:
        sys.stdout.write(json.dumps(graph.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """Upstream lineage of MODEL: training run, features, datasets, ingestion batches.

    MODEL is a model id, NAME@VERSION, or a model name (its latest version)."""
    with open_store(args) as store:
        try:
            graph = lineage(store, args.target)
        except ProvenanceError as exc:
            names = [node.attributes.get("model_name") for node in
                     build_graph(store).of_kind("model")]
            known = sorted({str(name) for name in names if name})
            hint = did_you_mean(args.target.rpartition("@")[0] or args.target, known)
            raise ProvenanceError(
                f"{exc}{hint} (model names: {', '.join(known) or 'none yet'})"
            ) from None
    return _print_graph(graph, args)


def cmd_impact(args: argparse.Namespace) -> int:
    """Downstream impact of DATASET_VERSION: what was built on it and must be retrained.

    DATASET_VERSION is the dataset's sha256 or a unique prefix of 6+ characters."""
    with open_store(args) as store:
        graph = impact(store, args.target)
    return _print_graph(graph, args)


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain a prediction: the model version that served it and that model's lineage.

    INFERENCE_ID is the id log_prediction returned, or the id of one of its events."""
    with open_store(args) as store:
        graph = explain(store, args.target)
    return _print_graph(graph, args)
