"""The command lines' common frame: a user's mistake is one line on stderr and exit status 2.

``run(main, prog)`` is ``absl.app.run`` with two guards: a command line that does not parse (an unknown
flag or config field, a value of the wrong type, a config file that does not exist) and a ``UserError``
raised by ``main`` (a bad value, path or checkpoint) print ``<prog>: error: <message>`` and exit 2;
a diverged run (``Diverged``) prints one line and exits 3. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from irnet_jax.errors import Diverged, UserError

USER_ERROR_EXIT = 2
DIVERGED_EXIT = 3


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (ml_collections quotes its KeyError messages; absl adds a
    second line pointing at ``--helpfull``)."""
    text = str(error)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].replace("\\n", " ").replace("\\'", "'")
    return " ".join(text.split()) or type(error).__name__


def fail(prog: str, message: str, status: int = USER_ERROR_EXIT) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _flags_parser(prog: str) -> Callable[[Sequence[str]], list[str]]:
    def parse(argv: Sequence[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError) as e:  # ml_collections: an override of a field that does not exist
            fail(prog, f"unknown config field {one_line(e)}")
        except Exception as e:  # noqa: BLE001 - every parse failure is the command line's: absl, ml_collections, IO
            fail(prog, one_line(e))

    return parse


def _load_config_files() -> None:
    """Load every ml_collections config flag now (they load lazily, on first use, as a traceback)."""
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        if type(flag).__module__.startswith("ml_collections") and flag.present:
            getattr(flag.value, "keys", None)  # an attribute access loads the file, applies the overrides


def run(main: Callable[[list[str]], object], prog: str) -> None:
    """``app.run(main)`` with one-line errors (see the module docstring)."""

    def guarded(argv: list[str]) -> object:
        if len(argv) > 1:
            fail(prog, f"unexpected arguments {argv[1:]}: every option is a --flag")
        try:
            _load_config_files()
        except Exception as e:  # noqa: BLE001 - a config file that does not load or run is the user's
            fail(prog, f"cannot load the config: {one_line(e)}")
        try:
            return main(argv)
        except UserError as e:
            fail(prog, one_line(e))
        except Diverged as e:
            fail(prog, one_line(e), DIVERGED_EXIT)

    app.run(guarded, flags_parser=_flags_parser(prog))
