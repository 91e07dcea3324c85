"""Two kinds of failure, told apart by their type.

- Bad input: everything a user can get wrong (an image file, a folder, a command-line argument, a config
  value, a checkpoint or predictions file) raises `LungCNNInputError` with a message that names the thing
  and says what was expected. Entry points (`lungcnn.cli.friendly_errors`) and the app show that one
  line, and commands exit with code 2.
- Bugs: a state that no input can cause (arrays of mismatched shapes built by our own code, a caller
  breaking a function's contract) raises a plain Python exception (ValueError, TypeError, RuntimeError,
  ...), which propagates with its full traceback. Never raise `LungCNNInputError` for those: it would
  hide the traceback and tell the user their input was wrong.
"""


class LungCNNInputError(ValueError):
    """Bad input from the user: an unreadable image, a missing folder, a bad setting, a foreign checkpoint."""
