"""The one exception type the CLI turns into a clean message and exit code 2."""


class UserError(Exception):
    """Bad input the user can fix (malformed config, unknown storage URL, missing dataset, ...).

    The message must name the problem and the fix; the CLI prints it without a traceback.
    """

    exit_code = 2
