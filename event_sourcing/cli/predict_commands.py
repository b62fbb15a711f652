"""`mlevents predict`: score a CSV batch with the deployed model and log what happened.

Built on event_sourcing.serving; predictions (and feedback, with labels) go to the store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from event_sourcing.catalog import DEFAULT_ENVIRONMENT
from event_sourcing.cli.common import (
    CommandLineError,
    add_json_argument,
    add_url_argument,
    artifact_store,
    did_you_mean,
    open_store,
    print_json_line,
    set_handler,
)

if TYPE_CHECKING:
    from event_sourcing.serving import Deployment

__all__ = ["cmd_predict", "register"]


def cmd_predict(args: argparse.Namespace) -> int:
    """Score every row of a CSV file with the model deployed in an environment.

    Each prediction is logged (inference_requested + inference_completed); when the file has
    the label column, the true label is logged as inference_feedback and the accuracy is
    printed, then each inference id. --json prints one JSON line per row instead.
    """
    import pandas as pd  # (with serving's: imported when a batch is scored, not at start)

    from event_sourcing.serving import NoDeployedModelError, deployments, score_batch

    path = Path(args.csv)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise CommandLineError(f"no CSV file at {str(path)!r}; give the batch to score") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CommandLineError(f"{str(path)!r} is not a readable CSV file: {exc}") from None
    label = None if args.label_column in ("", "none") else args.label_column
    id_column = None if args.id_column in ("", "none") else args.id_column
    artifacts = artifact_store(args)
    with open_store(args) as store:
        serving = deployments(store)
        if (args.environment, args.model_name) not in serving and not any(
            env == args.environment and args.model_name is None for env, _ in serving
        ):
            raise NoDeployedModelError(_nothing_serves(args, serving))
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
    if result.inference_ids:
        out.write("inference ids (explain one with `mlevents explain ID`):\n")
        for row, (inference_id, prediction) in enumerate(
            zip(result.inference_ids, result.predictions, strict=True)
        ):
            out.write(f"  {inference_id}  row {row}: {prediction}\n")
    return 0


def _nothing_serves(
    args: argparse.Namespace, serving: dict[tuple[str, str], Deployment]
) -> str:
    """Why predict cannot score: what serves where instead, with a did-you-mean."""
    which = f"model {args.model_name!r} is not" if args.model_name else "no model is"
    if not serving:
        return (
            f"{which} deployed in {args.environment!r}: nothing serves anywhere yet "
            "(no model_deployed event); deploy one first, e.g. let `make run` train and deploy"
        )
    now = ", ".join(f"{name} v{d.version} in {env}" for (env, name), d in sorted(serving.items()))
    environments = {env for env, _ in serving}
    if args.environment in environments:
        hint = did_you_mean(args.model_name or "", {name for _, name in serving})
    else:
        hint = did_you_mean(args.environment, environments)
    return f"{which} deployed in {args.environment!r}{hint} (serving now: {now})"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `predict` to the `mlevents` parser."""
    predict = subparsers.add_parser(
        "predict",
        help="score a CSV batch with the deployed model (logs predictions and feedback)",
        description=cmd_predict.__doc__,
        epilog="Example: mlevents predict --csv batch.csv (the store and the artifacts "
        "beside it: .mlevents/events.db and .mlevents/artifacts, `make run`'s)",
    )
    add_url_argument(predict)
    predict.add_argument("--csv", required=True, metavar="FILE", help="the batch to score")
    predict.add_argument(
        "--artifacts",
        metavar="DIR",
        help="artifact store folder (default: $MLEVENTS_ARTIFACTS, then artifacts/ beside a "
        "SQLite store, then .mlevents/artifacts)",
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
    add_json_argument(predict)
    set_handler(predict, cmd_predict)
