"""The one error type for bad input.

Everything a user can get wrong (a file, a folder, a config value, a checkpoint) raises
`LungCNNInputError` with a message that names the thing and says what was expected, so entry points
and the app can show one clear line instead of a traceback.
"""


class LungCNNInputError(ValueError):
    """Bad input from the user: an unreadable image, a missing folder, a bad setting, a foreign checkpoint."""
