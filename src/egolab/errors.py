"""The base class of errors in what a user gave (files, configuration, command line).

``egolab.train`` reports these as their message alone, without a traceback: the message names the file,
record or key to fix, and the traceback would only bury it.
"""


class UserError(Exception):
    """Bad input: reported as one message, not a traceback."""


class BadValue(UserError, ValueError):
    """A configuration value or a data file that cannot be used."""
