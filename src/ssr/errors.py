"""User-facing errors. The CLI prints them on one line and exits with their code."""


def printable(text: str) -> str:
    """`text` with non-printable characters escaped, so a message stays on one line whatever
    the input it quotes (a key holding a line or record separator)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SSRError(Exception):
    """An error caused by the user's input (config, data, run directory); exit code 2."""

    exit_code = 2


class ConfigError(SSRError):
    """The config file or a --set override is invalid."""


class DataError(SSRError):
    """A data file is missing or malformed; the message names the file, line and field."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        where = f"{path}" + (f":{line}" if line is not None else "")
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")
        self.path, self.line, self.field = path, line, field


class RunDirError(SSRError):
    """The output directory belongs to a different run."""


class PeerError(Exception):
    """Under several processes: the main process failed a step it alone does (e.g. claiming the
    run directory); the others stop with its exit code and leave the report to it."""

    def __init__(self, err: BaseException):
        super().__init__(f"the main process failed: {err}")
        self.original = err
        self.exit_code = getattr(err, "exit_code", 1)
