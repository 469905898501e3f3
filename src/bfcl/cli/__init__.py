"""The ``bfcl`` command. Each sub-command lives in its own module as a ``<name>_command`` function
with ``Annotated`` options, and that module's ``register(app)`` attaches it here.

Errors are reported in one place (``_ErrorsAsMessages``): an error about the
user's input (``bfcl.errors.BFCLError``, a missing file, a bad value) becomes
one ``Error: ...`` line on stderr naming the file, key or sample, never a
traceback. ``bfcl --debug ...`` or ``BFCL_DEBUG=1`` shows the traceback instead.

Exit codes: 2 for usage and settings errors (typer's own, ``ConfigError``),
1 for everything else, images included (a missing image and an unreadable one
exit alike).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

DEBUG_ENV = "BFCL_DEBUG"
MAX_MESSAGE_CHARS = 2000
TRACEBACK_HINT = f"(run with --debug or {DEBUG_ENV}=1 for the traceback)"


def debug_requested(ctx: Any = None) -> bool:
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and root.params.get("debug"))


def describe_error(error: BaseException) -> tuple[int, list[str]]:
    """Exit code and message lines for an exception raised by a command."""
    from bfcl.errors import BFCLError, ConfigError

    if isinstance(error, ConfigError):
        code, text, hint = 2, str(error), False
    elif isinstance(error, BFCLError):
        code, text, hint = 1, str(error), False
    elif isinstance(error, OSError):
        name = getattr(error, "filename", None)
        if error.strerror and name is not None:  # raised by the OS: "No such file or directory: PATH"
            text = f"{error.strerror}: {name}"
        else:  # raised by bfcl with its own message
            text = str(error) or type(error).__name__
        code, hint = 1, False
    elif isinstance(error, ValueError):
        code, text, hint = 1, str(error) or type(error).__name__, False
    else:  # a bug rather than bad input: say so, and how to see where
        code, text, hint = 1, f"unexpected {type(error).__name__}: {error}", True
    lines = [line for line in text.splitlines() if line.strip()] or [type(error).__name__]
    message = lines[0] if len(lines) == 1 else "; ".join(lines)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"… ({len(message)} characters)"
    return code, [f"Error: {message}"] + ([TRACEBACK_HINT] if hint else [])


class _ErrorsAsMessages(TyperGroup):
    """The top-level group: every sub-command runs inside its ``invoke``, so one handler covers them all."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exits and usage errors: typer reports them
            raise
        except Exception as e:
            if debug_requested(ctx):
                raise
            code, lines = describe_error(e)
            for line in lines:
                typer.echo(line, err=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=_ErrorsAsMessages,
    no_args_is_help=True,
    add_completion=False,
    help="bfcl: multimodal named entity recognition with Bottleneck Fusion and Contrastive Learning.",
)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help=f"Show the full traceback of an error (also: {DEBUG_ENV}=1).")] = False,
) -> None:
    """bfcl: multimodal named entity recognition with Bottleneck Fusion and Contrastive Learning."""


def _register() -> None:
    from bfcl.cli import data, demo, experiment, explain, features, predict, serve, train

    for module in (data, train, demo, predict, serve, explain, features, experiment):
        module.register(app)


_register()


def main() -> None:
    app()
