"""The one exception type the CLI turns into a one-line message (anything else is a bug)."""


class DscloraError(Exception):
    """A problem with the user's input: a file, a checkpoint, an option. Its message is shown as is."""
