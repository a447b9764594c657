"""How every command-line tool ends on bad input: one line on stderr, a non-zero exit, no traceback.

Library code raises :class:`UserError` (or one of its kinds), or the ``ValueError`` / ``OSError`` family that
the standard library and numpy raise for unusable input; :func:`run_cli` turns any of them into
``<prog>: error: <message>`` and exit status 2. Anything else is a bug: one ``internal error`` line and
status 1. ``--debug`` (accepted by every tool) re-raises instead, so the traceback shows.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl.app import UsageError as AbslUsageError

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"


class UserError(Exception):
    """Input the tool cannot use; the message names the file, key or subject and the fix."""


class ConfigError(UserError, ValueError):
    """A config field that is unknown or out of range."""


class WorkdirError(UserError):
    """A run directory that cannot be used (locked by another run, a file, another architecture)."""


class CorruptFileError(UserError, ValueError):
    """A file whose contents do not match the checksum recorded when it was written."""


# What a user can cause (FloatingPointError: training's non-finite loss stop, whose message says what to change);
# everything else reaching run_cli is a bug in the tool.
USER_ERRORS = (UserError, ValueError, OSError, EOFError, ImportError, FloatingPointError, AbslUsageError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError's repr quotes are dropped)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


def run_cli(main: Callable[[list[str]], object], argv: Sequence[str] | None = None, prog: str = "") -> object:
    """Call ``main(argv)`` (default ``sys.argv[1:]``) and map its errors to one line and an exit status.

    Returns what ``main`` returns; on an error raises ``SystemExit`` with the status (so in-process callers,
    e.g. tests, see it as ``SystemExit.code``). ``--debug`` anywhere in argv is removed and disables the mapping.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    prog = prog or _prog_name()
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except Exception as err:  # noqa: BLE001 - the one place a tool may catch everything
        if debug:
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {one_line(err)} "
              f"(rerun with {DEBUG_FLAG} for the traceback, and report it)", file=sys.stderr)
        raise SystemExit(EXIT_INTERNAL) from None


def negative_values_attached(argv: Sequence[str] | None, options: Sequence[str]) -> list[str] | None:
    """``["--center", "-1,2,3"]`` -> ``["--center=-1,2,3"]`` for ``options``: argparse would read a value that
    starts with '-' as a flag ("expected one argument") instead of reporting what is wrong with the value."""
    if argv is None:
        return None
    out, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg in options and args and args[0].startswith("-") and args[0][1:2].isdigit():
            arg = f"{arg}={args.pop(0)}"
        out.append(arg)
    return out


def parse_absl_flags(argv: Sequence[str]) -> list[str]:
    """Parse ``argv`` (without the program name) into absl's FLAGS, as ``app.run`` would; returns the
    remaining arguments with the program name first. Bad flags and unknown ``--config.x`` fields become
    ConfigError naming them (ml_collections reports an unknown field as a bare AttributeError / KeyError)."""
    from absl import flags

    FLAGS = flags.FLAGS
    FLAGS.unparse_flags()  # in-process callers (tests) parse more than once: forget the last parse,
    for name in [n for n in FLAGS if "." in n]:  # including the --config.x override flags it registered
        delattr(FLAGS, name)
    saved, sys.argv = sys.argv, [sys.argv[0], *argv]  # config_flags reads its --config.x overrides from sys.argv
    try:
        return FLAGS(sys.argv)
    except flags.Error as err:
        raise ConfigError(one_line(err)) from None
    except (AttributeError, KeyError) as err:
        field = one_line(err).strip("'\"")
        given = [a.split("=")[0] for a in argv if a.startswith("--config.") and field in a.split("=")[0].split(".")]
        raise ConfigError(f"unknown config field {field!r} ({', '.join(given) or 'in the overrides'}); check "
                          "the spelling against the config file (configs/*.py, mmdino_jax/config_base.py)") from None
    finally:
        sys.argv = saved


def _prog_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return f"python -m {spec.name.removesuffix('.__main__')}" if spec and spec.name else sys.argv[0]
