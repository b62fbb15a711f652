"""`mlevents forget SUBJECT --reason ...` and `mlevents erasure-report SUBJECT`: erasing a
data subject by crypto-shredding, and the document an auditor reads (event_sourcing.privacy).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from event_sourcing.cli.common import (
    add_json_argument,
    add_url_argument,
    human_output,
    open_store,
    set_handler,
    stdout_console,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `forget` and `erasure-report` to the `mlevents` parser."""
    forget = subparsers.add_parser(
        "forget",
        help="erase a data subject: destroy their key, record subject_erased",
        description=cmd_forget.__doc__,
        epilog="Example: mlevents forget alice@example.com --reason 'GDPR art. 17, ticket 4711'",
    )
    forget.add_argument("subject", metavar="SUBJECT", help="the subject id, as appended")
    forget.add_argument("--reason", required=True, help="why (kept in the log)")
    add_url_argument(forget)
    add_json_argument(forget)
    set_handler(forget, cmd_forget)

    report = subparsers.add_parser(
        "erasure-report",
        help="what was erased of a data subject, when and why, with event ids",
        description=cmd_erasure_report.__doc__,
        epilog="Example: mlevents erasure-report alice@example.com --json",
    )
    report.add_argument("subject", metavar="SUBJECT", help="the subject id, as appended")
    add_url_argument(report)
    add_json_argument(report)
    set_handler(report, cmd_erasure_report)

    impact = subparsers.add_parser(
        "subject-impact",
        help="which dataset versions, trainings, models, deployments, predictions involve a "
        "data subject",
        description=cmd_subject_impact.__doc__,
        epilog="Example: mlevents subject-impact alice@example.com",
    )
    impact.add_argument("subject", metavar="SUBJECT", help="the subject id, as appended")
    add_url_argument(impact)
    add_json_argument(impact)
    set_handler(impact, cmd_subject_impact)


def cmd_forget(args: argparse.Namespace) -> int:
    """Forget SUBJECT: delete their data key, so every personal value sealed under it reads as
    an erased marker from now on, and append a subject_erased event holding no personal data
    (a keyed hash of the subject id, the reason, the affected event ids). Event rows are never
    changed. Needs the key-encryption key ($MLEVENTS_KEK)."""
    with open_store(args) as store:
        event = store.forget(args.subject, reason=args.reason)
    summary = {"erasure_event_id": event.id, "position": event.position, **event.payload}
    if human_output(args):
        stdout_console().print(
            f"forgot subject {summary['subject_hash'][:16]}...: {summary['keys_destroyed']} "
            f"key(s) destroyed, {summary['affected_count']} event(s) now read as erased "
            f"(subject_erased {event.id} at position {event.position})",
            markup=False,
        )
    else:
        print(json.dumps(summary, ensure_ascii=False))
    return 0


def cmd_erasure_report(args: argparse.Namespace) -> int:
    """Report every erasure of SUBJECT: when, why, how many keys were destroyed, which events
    (by id and type) now read as erased, which dataset versions were redacted (old -> new),
    which models were flagged, retrained, retired and deployed (with event ids), and whether
    the subject holds a live key again (data appended after the erasure, itself
    forgettable)."""
    from event_sourcing.privacy.forget import erasure_report

    with open_store(args) as store:
        report = erasure_report(store, args.subject)
    if not human_output(args):
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    print(_text(report))
    return 0


def _text(report: dict[str, Any]) -> str:
    lines = [f"Erasure report for subject {report['subject_hash'] or '(never seen)'} "
             "(a keyed hash of the id)"]
    if not report["erasures"]:
        lines.append("No erasure recorded for this subject.")
    for n, erasure in enumerate(report["erasures"], start=1):
        types = ", ".join(f"{k}: {v}" for k, v in sorted(erasure["affected_types"].items()))
        lines += [
            "",
            f"{n}. erased at {erasure['erased_at']} by event {erasure['event_id']} "
            f"(position {erasure['position']})",
            f"   reason: {erasure['reason']}",
            f"   keys destroyed: {erasure['keys_destroyed']}; events erased: "
            f"{erasure['affected_count']}" + (f" ({types})" if types else ""),
        ]
        lines += [f"   - {event_id}" for event_id in erasure["affected_events"]]
        lines += _ml_lines(erasure)
    lines.append("")
    lines.append(
        "The subject holds a live key: data appended after the last erasure is readable."
        if report["holds_live_key"]
        else "The subject holds no live key: none of their personal values can be read."
    )
    return "\n".join(lines)


def _ml_lines(erasure: dict[str, Any]) -> list[str]:
    """Datasets redacted, models flagged, retrained, retired and deployed."""
    lines = []
    if erasure["dataset_versions"]:
        lines.append("   dataset versions holding the subject's rows: "
                     + ", ".join(erasure["dataset_versions"]))
    for r in erasure["redactions"]:
        lines.append(
            f"   dataset {r['dataset_id']} redacted at {r['redacted_at']}: version "
            f"{r['old_version']} -> {r['new_version']} ({r['rows_removed']} row(s) of "
            f"column {r['subject_column']} removed, {r['rows_out']} kept; "
            f"{len(r['deleted_artifacts'])} artifact(s) deleted) by event {r['event_id']}"
        )
    if erasure["dataset_versions"] and not erasure["redactions"]:
        lines.append("   no dataset version redacted yet (the pipeline's redacted_data "
                     "asset does it)")
    if erasure["flagged_models"]:
        lines.append("   models trained on them, flagged in model_catalog: "
                     + ", ".join(erasure["flagged_models"]))
    for m in erasure["retrained_models"]:
        lines.append(f"   retrained without the subject: {m['model_id']} (training "
                     f"{m['training_id']}, dataset version {m['dataset_version']}; event "
                     f"{m['training_completed_event_id']})")
    for m in erasure["retired_models"]:
        lines.append(f"   retired from {m['environment']} at {m['retired_at']}: "
                     f"{m['model_id']}, replaced by {m['replaced_by_model_id']} (event "
                     f"{m['event_id']})")
    for m in erasure["deployed_models"]:
        lines.append(f"   deployed to {m['environment']} at {m['deployed_at']}: "
                     f"{m['model_id']} (event {m['event_id']})")
    return lines


def cmd_subject_impact(args: argparse.Namespace) -> int:
    """List what involves SUBJECT: the dataset versions recorded as holding their rows
    (dataset_subjects_recorded), the feature versions, training runs, models and
    deployments built on those, and the subject's own prediction events."""
    from event_sourcing.privacy.impact import subject_impact

    with open_store(args) as store:
        found = subject_impact(store, args.subject)
    if not human_output(args):
        print(json.dumps(found, ensure_ascii=False, indent=2))
        return 0
    print(f"Subject {found['subject_hash'] or '(never seen)'} (a keyed hash of the id)")
    for key, title in (
        ("dataset_versions", "dataset versions"), ("feature_version", "feature versions"),
        ("training_run", "training runs"), ("model", "models"),
        ("deployment", "deployments"), ("predictions", "prediction events"),
    ):
        print(f"{title}: {', '.join(found[key]) or '-'}")
    return 0
