"""The error types that the command line turns into a single line and exit code 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a wrong setting, a missing or corrupt file.

    The message is one line that names what was wrong and what is accepted. The CLI
    prints it as ``robustmix <command>: error: <message>`` and exits with status 2.
    """


class ConfigError(UsageError, ValueError):
    """A setting out of its range, named by its field (``alpha``, ``pgd.steps``).

    Library code speaks in field names, the way a Python caller spelled them; only the
    command line turns ``field`` into the flag its user typed (``--alpha``). ``source``
    names where the setting came from when that was a file (a study TOML, a config.json).
    ``mentions``: other fields the problem names (a setting that would do), which the
    command line names as flags too.
    """

    def __init__(self, field: str, problem: str, *, source: str | None = None,
                 mentions: tuple[str, ...] = ()):
        self.field, self.problem, self.source = field, problem, source
        self.mentions = mentions
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{field} {problem}")

    def within(self, section: str, source: str | None = None) -> "ConfigError":
        """The same error, its field named inside ``section`` (``train.alpha``)."""
        return ConfigError(f"{section}.{self.field}" if section else self.field,
                           self.problem, source=source or self.source,
                           mentions=self.mentions)
