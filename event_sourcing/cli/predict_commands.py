"""`mlevents predict`: score a CSV batch with the deployed model and log what happened.

Built on event_sourcing.serving; predictions (and feedback, with labels) go to the store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from event_sourcing.artifacts import ArtifactStore
from event_sourcing.cli.common import (
    CommandLineError,
    add_url_argument,
    open_store,
    print_json_line,
    set_handler,
)
from event_sourcing.serving import DEFAULT_ENVIRONMENT, score_batch

__all__ = ["cmd_predict", "register"]


def cmd_predict(args: argparse.Namespace) -> int:
    """Score every row of a CSV file with the model deployed in an environment.

    Each prediction is logged (inference_requested + inference_completed); when the file has
    the label column, the true label is logged as inference_feedback and the accuracy is
    printed. --json prints one JSON line per row instead of the summary.
    """
    path = Path(args.csv)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise CommandLineError(f"no CSV file at {str(path)!r}; give the batch to score") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CommandLineError(f"{str(path)!r} is not a readable CSV file: {exc}") from None
    label = None if args.label_column in ("", "none") else args.label_column
    id_column = None if args.id_column in ("", "none") else args.id_column
    artifacts = ArtifactStore(args.artifacts) if args.artifacts else ArtifactStore()
    with open_store(args) as store:
        result = score_batch(
            store,
            artifacts,
            frame,
            environment=args.environment,
            model_name=args.model_name,
            label_column=label,
            id_column=id_column,
            log=not args.no_log,
            metadata={"source": "mlevents predict", "batch_file": path.name},
        )
    if args.json:
        for row, prediction in enumerate(result.predictions):
            line = {"row": row, "prediction": prediction}
            if result.inference_ids:
                line["inference_id"] = result.inference_ids[row]
            if id_column and id_column in frame.columns:
                line[id_column] = frame[id_column].iloc[row].item()
            print_json_line(line)
        return 0
    out = sys.stdout
    out.write(
        f"model {result.model_name} v{result.model_version} ({result.model_id}) in "
        f"{args.environment}: scored {len(result.predictions)} row(s) from {path.name}\n"
    )
    if result.inference_ids:
        out.write(f"logged {len(result.inference_ids)} prediction(s)")
        out.write(f" and {result.feedback} feedback event(s)\n" if result.feedback else "\n")
    if result.accuracy is not None:
        out.write(f"accuracy on labelled rows: {result.accuracy:.4f}\n")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `predict` to the `mlevents` parser."""
    predict = subparsers.add_parser(
        "predict",
        help="score a CSV batch with the deployed model (logs predictions and feedback)",
        description=cmd_predict.__doc__,
        epilog="Example: mlevents predict sqlite:///.mlevents/events.db --csv batch.csv "
        "--artifacts .mlevents/artifacts",
    )
    add_url_argument(predict)
    predict.add_argument("--csv", required=True, metavar="FILE", help="the batch to score")
    predict.add_argument(
        "--artifacts",
        metavar="DIR",
        help="artifact store folder (default: $MLEVENTS_ARTIFACTS, then .mlevents/artifacts)",
    )
    predict.add_argument(
        "--environment", default=DEFAULT_ENVIRONMENT, help="deployment environment to use"
    )
    predict.add_argument(
        "--model-name", metavar="NAME", help="deployed model name (default: any in the environment)"
    )
    predict.add_argument(
        "--label-column",
        default="target",
        metavar="COLUMN",
        help="column with true labels, logged as feedback when present ('none' to skip)",
    )
    predict.add_argument(
        "--id-column",
        default="sample_id",
        metavar="COLUMN",
        help="row id column, kept out of the model inputs ('none' if there is none)",
    )
    predict.add_argument(
        "--no-log", action="store_true", help="only predict; write nothing to the store"
    )
    predict.add_argument("--json", action="store_true", help="one JSON line per row")
    set_handler(predict, cmd_predict)
