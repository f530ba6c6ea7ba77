"""The rich console every command prints through."""

from __future__ import annotations

from rich.console import Console

__all__ = ["PipeConsole"]


class PipeConsole(Console):
    """A console that lets a broken pipe (``| head``) be one. rich's own answer, exit 1 at
    once, would skip the command line's (quiet, exit 141), and inside an event loop's task
    group its SystemExit came out as a traceback."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError
