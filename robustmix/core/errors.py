"""The one error type that the command line turns into a single line and exit code 2."""


class UsageError(Exception):
    """Bad input from the user: a wrong flag value, a missing or corrupt file.

    The message is one line that names what was wrong and what is accepted. The CLI
    prints it as ``robustmix <command>: error: <message>`` and exits with status 2.
    """
