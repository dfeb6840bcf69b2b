"""How every `python -m mkd_jax.<tool>` ends on an error: one line, no traceback.

A bad config, file or value (`ValueError`, `OSError` and their subclasses: `ConfigError`,
`AudioError`, `CheckpointError`, ...) prints `error: <message>` and exits 2; a run that stopped
because it went wrong (`RunFailed`, e.g. a non-finite loss) prints the same and exits 1.
`--verbose` re-raises, for the full traceback.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


class RunFailed(RuntimeError):
    """A run that stopped because its result would be wrong (never exit 0 with garbage)."""


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    return text.splitlines()[0] if "\n" not in text[:300] else " ".join(text.split())


def run(main) -> None:
    """`absl.app.run(main)` with user errors turned into one `error:` line and an exit code."""
    flags.DEFINE_boolean("verbose", False, "Show the full traceback of an error.")

    def wrapped(argv):
        try:
            return main(argv)
        except (ValueError, OSError, RunFailed) as e:
            if FLAGS.verbose:
                raise
            print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
            print("(rerun with --verbose for the traceback)", file=sys.stderr, flush=True)
            sys.exit(1 if isinstance(e, RunFailed) else 2)

    app.run(wrapped)
