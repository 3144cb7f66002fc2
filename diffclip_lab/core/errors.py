# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""The one error type for input that cannot be used as given; scripts report it in one line (`cli.run_main`)."""


class UserError(Exception):
    """Input that cannot be used as given (a path, a dataset, an option); the message says what is wrong and what to
    do. Scripts report it as one line; anything else is a bug and keeps its traceback."""

    def __init__(self, message: str = ""):
        # Raised in a DataLoader worker, it comes back as UserError("Caught UserError in DataLoader worker process N.
        # Original Traceback ... diffclip_lab.core.errors.UserError: <message>"): the user gets the message alone.
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith(f"Caught {type(self).__name__} in DataLoader worker") and marker in message:
            message = message.rsplit(marker, 1)[1].rstrip("\n")
        super().__init__(message)
