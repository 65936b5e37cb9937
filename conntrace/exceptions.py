"""Public exception and warning classes."""


class CloseErrorWarning(UserWarning):
    """A driver error raised while closing a connection, downgraded to a warning.

    A ``UserWarning`` (not a ``RuntimeWarning``, which Django's test runner
    turns into errors) so that a suite opts in with
    ``-W error::conntrace.CloseErrorWarning``.
    """


class InheritedConnectionError(RuntimeError):
    """A forked child used a database connection opened by its parent (``FORK_POLICY="raise"``)."""
