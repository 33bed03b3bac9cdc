"""Errors that reach the user.

Rule: inside a stage, malformed input is *counted* (see ``sniffer.stats``), never raised.
``WirespanError`` is only for conditions that stop a command (an unreadable file, a bad
option); its message names the cause and its ``hint`` the fix. The CLI turns it into one
line on stderr and exit code 1 (runtime) or 2 (usage).
"""

from __future__ import annotations


class WirespanError(Exception):
    """A failure the user can act on. ``exit_code`` is 1 (runtime) or 2 (usage)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(WirespanError):
    exit_code = 2


class CaptureFormatError(WirespanError):
    """The input is not a capture we can read (bad magic, unsupported version)."""
