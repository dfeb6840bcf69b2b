"""How every `python -m mkd_jax.<tool>` ends on an error: one line, no traceback.

A bad config, file or value (`ValueError`, `OSError` and their subclasses: `ConfigError`,
`AudioError`, `CheckpointError`, ...) prints `error: <message>` and exits 2; a run that stopped
because it went wrong (`RunFailed`, e.g. a non-finite loss) prints the same and exits 1.
The same holds for what goes wrong while the flags are parsed: a `--config` file that does not
load, an override of a key the config lacks, a flag value of the wrong type, a usage error (one
line, not the whole flag list; `--help` still shows that). `--verbose` re-raises, for the full
traceback. INFO lines of libraries (orbax writes dozens per
checkpoint) stay below the console; the project's own INFO lines show. Freed host memory is
kept for reuse (`host_memory`).
"""

from __future__ import annotations

import sys
from pathlib import Path

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


def positive_ints(flag: str, values) -> list[int]:
    """A list flag's values as whole numbers >= 1, or a ValueError naming the flag."""
    out = []
    for v in values:
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"--{flag}: {v!r} is not a whole number") from None
        if n < 1:
            raise ValueError(f"--{flag}={','.join(map(str, values))}: each must be >= 1")
        out.append(n)
    return out


def _fail(message: str, code: int = 2, hint: bool = True) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if hint:
        print("(rerun with --verbose for the traceback)", file=sys.stderr, flush=True)
    sys.exit(code)


def _innermost(e: BaseException) -> BaseException:
    """ml_collections wraps a KeyError in a KeyError in an AttributeError: the first one."""
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    return e


def config_flag_error(e: BaseException, argv: list[str]) -> str:
    """One line for an exception raised while `--config` (a config file plus `--config.a.b=v`
    overrides) was parsed: the file and line of a syntax error, or the override whose key the
    config lacks, with ml_collections' "did you mean" hint."""
    inner = _innermost(e)
    config = _config_path(argv) or "?"
    if isinstance(inner, SyntaxError):
        return f"--config {inner.filename or config}, line {inner.lineno}: {inner.msg}"
    text = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
    text = str(text).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    key = lines[0].strip("'\"") if lines else ""
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    named = [o for o in overrides if key and key in o[len("--config.") :].split(".")]
    if isinstance(inner, (KeyError, AttributeError)) and named:
        hint = f" ({' '.join(lines[1:])})" if len(lines) > 1 else ""
        return f"{named[0]}: the config from {config} has no key {key!r}{hint}"
    if isinstance(inner, AttributeError) and "get_config" in text:
        return f"--config {config}: the file defines no get_config()"
    return f"--config {config}: {type(inner).__name__}: {' '.join(lines) or type(inner).__name__}"


def _config_path(argv: list[str]) -> str | None:
    for i, a in enumerate(argv[1:], 1):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    config = _config_path(argv)
    if config is not None and not any(
        Path(c).is_file() for c in (config, config.rsplit(":", 1)[0])
    ):
        _fail(f"--config {config}: no such file", hint=False)
    try:
        return FLAGS(argv)
    except flags.Error as e:  # a flag's value: absl names the flag
        _fail(_one_line(e), hint=False)
    except Exception as e:  # noqa: BLE001 -- a config file that does not load, or an unknown key
        if "--verbose" in argv:
            raise
        _fail(config_flag_error(e, argv))


def run(main) -> None:
    """`absl.app.run(main)` with library INFO chatter off and user errors turned into one
    `error:` line and an exit code."""
    flags.DEFINE_boolean("verbose", False, "Show the full traceback of an error.")

    def wrapped(argv):
        quiet_library_logs()
        host_memory.keep_freed_memory()
        try:
            return main(argv)
        except app.UsageError as e:  # not absl's 60-line flag list: `--help` shows that
            if FLAGS.verbose:
                raise
            _fail(f"{_one_line(e)} (see --help)", hint=False)
        except (ValueError, OSError, RunFailed) as e:
            if FLAGS.verbose:
                raise
            _fail(_one_line(e), 1 if isinstance(e, RunFailed) else 2)

    app.run(wrapped, flags_parser=_parse_flags)
