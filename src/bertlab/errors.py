"""The one exception type that the command line turns into a one-line error.

Every check on user input (files, configs, checkpoints) raises :class:`BertlabError` with a message
that names the file, line and field where they apply. The CLI prints ``error: <message>`` and exits
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BertlabError(Exception):
    """A problem with the user's input, reported as one readable line."""

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message would read like a traceback.
        super().__init__(" ".join(str(message).split()))
