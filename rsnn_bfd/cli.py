"""Command lines from config dataclasses: one convention for every script.

Each script has one config dataclass; every field is a ``--flag-name`` built by
:func:`build_parser`:

- a ``bool`` field becomes ``--flag / --no-flag``;
- a field whose default is ``None`` means "the checkpoint's (or the training run's) value";
  its type is given with ``flag(..., type=int)``;
- ``choices`` and ``required`` pass through to argparse.

Every script's parser is an :class:`ArgumentParser`: a malformed or invalid flag is one line
``error: --flag: what is wrong (see SCRIPT --help)`` and exit code 2, not argparse's usage.
:func:`run_cli` runs a script's ``main`` so that user errors (``ValueError``, missing files)
become one ``error: ...`` line and exit code 2, and Ctrl-C one line and exit code 130.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import field

SEED_MAX = 2 ** 63 - 1   # seeds are stored as 64-bit integers (checkpoints, HDF5 attributes)


def flag(default, help: str, choices=None, type=None, required: bool = False):
    """A config field with its command-line help (``type`` for fields defaulting to None)."""
    return field(default=default, metadata={"help": help, "choices": choices, "type": type,
                                            "required": required})


def seed_check(value, flag: str):
    """The ``(ok, message)`` pair of :func:`require` for a seed: an integer in 0..SEED_MAX."""
    return (isinstance(value, int) and 0 <= value <= SEED_MAX,
            f"{flag} must be an integer in 0..{SEED_MAX}, got {value}")


def data_dir_check(value, hint: str = "give . for the current folder"):
    """The ``(ok, message)`` pair of :func:`require` for ``--data-dir``: ``None`` (the
    command's own default) or a non-empty path. An empty string would be taken as the
    current folder, and a missing dataset generated there (about 800 MB)."""
    return (value is None or bool(str(value).strip()),
            f"--data-dir must name a folder, got '' ({hint})")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors as one line naming the flag and pointing to ``--help``
    (exit code 2) instead of the whole usage."""

    def error(self, message):
        msg = re.sub(r"^argument ([^:]+): ", r"\1: ", " ".join(str(message).split()))
        self.exit(2, f"error: {msg} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None ("from the checkpoint"), "", booleans (``--no-x``) and
    helps that say their default themselves."""

    def _get_help_string(self, action):
        if (action.default in (None, "") or isinstance(action.default, bool)
                or "(default" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)


def build_parser(config_cls, defaults=None, description: str | None = None,
                 suppress_defaults: bool = False, prog: str | None = None
                 ) -> argparse.ArgumentParser:
    """An ArgumentParser with one ``--flag-name`` per field of the dataclass ``config_cls``.

    ``defaults``: an instance whose values are the defaults (else the class defaults). With
    ``suppress_defaults`` only the flags given appear in the parsed namespace (to tell which
    were given explicitly).
    """
    parser = ArgumentParser(prog=prog, description=description, formatter_class=_Help)
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        value = getattr(defaults, f.name) if defaults is not None else f.default
        kwargs = dict(default=argparse.SUPPRESS if suppress_defaults else value,
                      help=meta.get("help", ""), dest=f.name)
        name = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(name, type=meta.get("type") or type(f.default),
                                choices=meta.get("choices"), required=meta.get("required", False),
                                **kwargs)
    return parser


def parse_config(config_cls, argv=None, defaults=None, description=None, prog=None):
    """Parse ``argv`` into ``(config, names of the fields given explicitly)``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ns = build_parser(config_cls, defaults, description, prog=prog).parse_args(argv)
    given = set(vars(build_parser(config_cls, defaults, description, suppress_defaults=True,
                                  prog=prog).parse_args(argv)))
    cfg = config_cls(**vars(ns))
    if hasattr(cfg, "with_preset"):   # a named set of defaults; the flags given still win
        cfg = cfg.with_preset(given)
    return cfg, given


def require(checks) -> None:
    """``checks``: ``(ok, message)`` pairs of a config's validation; raises ``ValueError`` with
    the message of the first that fails (the message names the flag)."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def run_cli(main_fn, argv=None) -> int:
    """Run ``main_fn(argv)``; user errors become one ``error: ...`` line on stderr, exit 2."""
    try:
        rc = main_fn(argv)
        return 0 if rc is None else int(rc)
    except (ValueError, FileNotFoundError, OSError) as err:
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"interrupted{'; ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
