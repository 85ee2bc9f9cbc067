"""The one exception type for user mistakes: the CLI prints it on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (missing file, unknown id, wrong dimension, empty text...).

    Anything else raised inside ragcli is a bug, not a user mistake.
    """


class IndexFormatError(UserError):
    """An index directory that is corrupt, incomplete or of an unknown format version."""
