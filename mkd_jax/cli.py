"""How every `python -m mkd_jax.<tool>` ends on an error: one line, no traceback.

A bad config, file or value (`ValueError`, `OSError` and their subclasses: `ConfigError`,
`AudioError`, `CheckpointError`, ...) prints `error: <message>` and exits 2; a run that stopped
because it went wrong (`RunFailed`, e.g. a non-finite loss) prints the same and exits 1.
`--verbose` re-raises, for the full traceback. INFO lines of libraries (orbax writes dozens per
checkpoint) stay below the console; the project's own INFO lines show. Freed host memory is
kept for reuse (`host_memory`).
"""

from __future__ import annotations

import sys

from absl import app, flags

from mkd_jax import host_memory

FLAGS = flags.FLAGS


class RunFailed(RuntimeError):
    """A run that stopped because its result would be wrong (never exit 0 with garbage)."""


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    return text.splitlines()[0] if "\n" not in text[:300] else " ".join(text.split())


def quiet_library_logs() -> None:
    """Keep INFO lines of ours; drop the INFO chatter of orbax, jax internals and other libraries.

    Libraries log through absl (orbax) or their own std-logging loggers; absl records carry the
    caller's file, so the filter sits on the `absl` logger and on the root handlers.
    """
    import logging as std_logging

    def keep(record) -> bool:
        ours = "/mkd_jax/" in record.pathname.replace("\\", "/")
        return record.levelno >= std_logging.WARNING or ours

    std_logging.getLogger("absl").addFilter(keep)
    for handler in std_logging.getLogger().handlers:
        handler.addFilter(keep)
    for name in ("orbax", "jax", "datasets", "transformers", "tensorstore", "urllib3", "filelock"):
        std_logging.getLogger(name).setLevel(std_logging.WARNING)
    # espeak's word-count check warns on every synthesised sentence with punctuation it splits.
    std_logging.getLogger("phonemizer").setLevel(std_logging.ERROR)


def run(main) -> None:
    """`absl.app.run(main)` with library INFO chatter off and user errors turned into one
    `error:` line and an exit code."""
    flags.DEFINE_boolean("verbose", False, "Show the full traceback of an error.")

    def wrapped(argv):
        quiet_library_logs()
        host_memory.keep_freed_memory()
        try:
            return main(argv)
        except (ValueError, OSError, RunFailed) as e:
            if FLAGS.verbose:
                raise
            print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
            print("(rerun with --verbose for the traceback)", file=sys.stderr, flush=True)
            sys.exit(1 if isinstance(e, RunFailed) else 2)

    app.run(wrapped)
