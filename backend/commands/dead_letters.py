"""`g4seg dead-letters list|replay`: the write-back jobs that failed for good, and putting them back.

A job lands there when it fails with an error waiting cannot cure (an image that cannot be decoded,
shapes that cannot be refined, a bug), or keeps failing for G4SEG_WRITEBACK_MAX_AGE seconds (Label
Studio down that long). `/health` and `/metrics` show their task and annotation ids; `list` shows
why each failed. After fixing the cause, `replay` puts them back in the queue, their age starting
anew; the server (`g4seg serve`, same G4SEG_DATA_DIR or G4SEG_QUEUE_URL) runs them.
"""
from __future__ import annotations

import datetime

from g4seg_core.errors import UserError

HELP = "list the write-back jobs that failed for good, or put them back in the queue (replay)"


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    actions.add_parser("list", help="one line per dead letter: job id, task, annotation, when and why it failed")
    replay = actions.add_parser("replay", help="put dead letters back in the queue")
    replay.add_argument("jobs", nargs="*", metavar="JOB", help="job ids from `list`")
    replay.add_argument("--all", action="store_true", help="every dead letter")


def run(args) -> int:
    from backend.jobs import open_queue
    from backend.settings import Settings

    if args.action == "replay" and bool(args.jobs) == bool(args.all):
        raise UserError("give the job ids to replay, or --all")
    queue = open_queue(Settings.from_env())
    if args.action == "list":
        letters = queue.dead_letters()
        for letter in letters:
            print(describe(letter))
        print(f"{len(letters)} dead letter(s) in the job queue at {queue.location}")
        return 0
    replayed = queue.replay(None if args.all else args.jobs)
    for job in replayed:
        print(f"{job['id']}: queued again (task {job['task']}, annotation {job['annotation']})")
    print(f"replayed {len(replayed)}; the server runs them")
    return 0


def describe(letter: dict) -> str:
    when = datetime.datetime.fromtimestamp(letter["failed_at"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"{letter['id']}  project {letter.get('project')}  task {letter['task']}  annotation {letter['annotation']}"
            f"  failed {when} after {letter.get('attempts', 0)} tries: {letter.get('reason')}")
