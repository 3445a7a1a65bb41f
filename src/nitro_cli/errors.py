"""Errors a user can cause. The CLI prints their message on one line and exits with code 2."""


class NitroError(Exception):
    """A problem the user can fix (bad config, missing dataset, wrong checkpoint); the message says how."""
