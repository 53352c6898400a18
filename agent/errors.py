"""Exit codes and the errors that map onto them.

Every error a user can cause carries a one-line message naming the file, key or value at fault
and what was expected; the CLI prints that line and exits with the code below, never a traceback.
"""

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and failed: some inputs failed (one bad WAV in a batch), the agent is unhealthy
EXIT_USAGE = 2  # wrong command-line usage, a flag's value included (argparse uses 2 as well)
EXIT_NOINPUT = 66  # sysexits EX_NOINPUT: an input (model directory, audio file, a download) is missing or corrupt
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: a service or component is unavailable (model hub, ONNX Runtime,
#                        the PortAudio library a microphone needs)
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE: an internal error (a bug): please report it
EXIT_CONFIG = 78  # sysexits EX_CONFIG: the configuration is invalid
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as the shell reports it: Ctrl-C before the command finished
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as the shell reports it: stdout's reader went away (`| head`)


class AgentError(Exception):
    """An error with a one-line, user-facing message and the exit code it maps to."""

    exit_code = EXIT_FAILED


class _Problems(AgentError):
    """One or more problems, each printed on a line of its own."""

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class UsageError(_Problems):
    """Wrong command-line usage that argparse cannot see (a flag's value checked against the config)."""

    exit_code = EXIT_USAGE


class ConfigError(_Problems):
    exit_code = EXIT_CONFIG


class ModelError(AgentError):
    """The model directory is missing a file, has a file of the wrong shape, or is corrupt."""

    exit_code = EXIT_NOINPUT


class UnavailableError(AgentError):
    """Something outside the agent is not there: the model hub cannot be reached, ONNX Runtime is not
    installed. Trying again later (or installing it) can help; editing the config cannot."""

    exit_code = EXIT_UNAVAILABLE


class ModelFetchError(AgentError):
    """`model fetch` could not finish (an HTTP error, a full disk, another fetch of it running); the message
    is one line naming the file, URL and values."""

    exit_code = EXIT_FAILED


class HubUnreachableError(ModelFetchError, UnavailableError):
    """The model hub (or a mirror) could not be reached or kept failing: nothing about the model is wrong."""

    exit_code = EXIT_UNAVAILABLE


class ModelMismatchError(ModelFetchError, ModelError):
    """A file is not the one the manifest pins (size or hash), downloaded or as the hub describes it."""

    exit_code = EXIT_NOINPUT


class UnknownModelError(ModelFetchError, UsageError):
    """A `model fetch` NAME the manifest lacks (usage); the message lists the known names."""

    exit_code = EXIT_USAGE
