"""The read-side subcommands of `mlevents`: project (run the built-in projections), models,
trainings and deployments (live or --as-of), and lineage, impact and explain.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import event_sourcing as es
from event_sourcing.cli.common import (
    add_url_argument,
    non_negative_int,
    open_store,
    parse_iso_datetime,
    positive_float,
    print_json_line,
    set_handler,
)
from event_sourcing.projections import (
    DEFAULT_INFERENCE_WINDOW,
    Projection,
    ProjectionRunner,
    Queryable,
    as_of,
    builtin_projections,
    list_deployments,
    list_models,
    list_trainings,
)
from event_sourcing.provenance import LineageGraph, explain, impact, lineage

FORMATS = ("json", "mermaid", "openlineage")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add project, models, trainings, deployments, lineage, impact and explain."""
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
    set_handler(project, cmd_project)

    for name, handler, extra in (
        ("models", cmd_models, _model_options),
        ("trainings", cmd_trainings, _training_options),
        ("deployments", cmd_deployments, _deployment_options),
    ):
        parser = subparsers.add_parser(
            name, help=f"list {name} (JSON lines), now or --as-of a time",
            description=handler.__doc__,
        )
        add_url_argument(parser)
        parser.add_argument(
            "--as-of", metavar="ISO|POSITION",
            help="as the log stood at this time (ISO 8601 with zone) or global position",
        )
        extra(parser)
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
            "--format", choices=FORMATS, default="json",
            help="json (nodes and edges), mermaid (flowchart) or openlineage (run events)",
        )
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
    deployments, inference_quality) up to the head of the log and print, per projection, one
    JSON line: events read, applied and parked, checkpoint, lag and dead letters."""
    if args.batch_size < 1 or args.inference_window < 1:
        raise es.EventStoreError("--batch-size and --inference-window must be >= 1")
    with open_store(args) as store:
        runner = ProjectionRunner(store, builtin_projections(args.inference_window))
        if args.rebuild:
            rebuilt = runner.rebuild(args.rebuild, args.batch_size)
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
        parked = 0
        for status in runner.status():
            run = stats.get(status.name)
            line: dict[str, Any] = {"projection": status.name}
            if run is not None:
                line.update(read=run.read, applied=run.applied, parked=run.parked,
                            rebuilt=run.rebuilt)
            line.update(checkpoint=status.checkpoint, lag=status.lag,
                        dead_letters=status.dead_letters)
            parked += status.dead_letters
            print_json_line(line)
    if parked:
        print(
            f"mlevents: warning: {parked} event(s) are parked in projection_dead_letters; "
            "fix the cause, then retry them (ProjectionRunner.retry_dead_letters) or rebuild",
            file=sys.stderr,
        )
    return 0


def _as_of(text: str) -> datetime | int:
    if text.isdigit():
        return int(text)
    return parse_iso_datetime(text, "--as-of")


def _read_model(
    args: argparse.Namespace, name: str, query: Callable[[es.EventStore | Queryable], list[Any]]
) -> int:
    """Print `query` over read model `name`: caught up live, or evaluated --as-of."""
    projection: Projection = next(p for p in builtin_projections() if p.name == name)
    with open_store(args) as store:
        if args.as_of is None:
            ProjectionRunner(store, [projection]).run()
            rows = query(store)
        else:
            with as_of(store, projection, _as_of(args.as_of)) as snapshot:
                rows = query(snapshot)
    for row in rows:
        print_json_line(row)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print the model catalog (one JSON line per model), as of now or --as-of."""
    return _read_model(
        args, "model_catalog", lambda src: list_models(src, name=args.name, status=args.status)
    )


def cmd_trainings(args: argparse.Namespace) -> int:
    """Print training run summaries (one JSON line per run), as of now or --as-of."""
    return _read_model(
        args, "training_summaries", lambda src: list_trainings(src, status=args.status)
    )


def cmd_deployments(args: argparse.Namespace) -> int:
    """Print the serving history (one JSON line per deployment), as of now or --as-of."""
    return _read_model(
        args,
        "deployments",
        lambda src: list_deployments(
            src, model_name=args.name, environment=args.environment, active_only=args.active
        ),
    )


# -- provenance -------------------------------------------------------------------------------


def _print_graph(graph: LineageGraph, fmt: str) -> int:
    if fmt == "mermaid":
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
        graph = lineage(store, args.target)
    return _print_graph(graph, args.format)


def cmd_impact(args: argparse.Namespace) -> int:
    """Downstream impact of DATASET_VERSION: what was built on it and must be retrained.

    DATASET_VERSION is the dataset's sha256 or a unique prefix of 6+ characters."""
    with open_store(args) as store:
        graph = impact(store, args.target)
    return _print_graph(graph, args.format)


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain a prediction: the model version that served it and that model's lineage.

    INFERENCE_ID is the id log_prediction returned, or the id of one of its events."""
    with open_store(args) as store:
        graph = explain(store, args.target)
    return _print_graph(graph, args.format)
