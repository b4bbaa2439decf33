"""One root exception for the hub; driver errors are wrapped at the boundary with ``from exc``."""


class KittError(Exception):
    """Root of every error the hub raises on purpose."""


class ConfigError(KittError):
    """The configuration is invalid; ``problems`` holds one ``key.path: reason`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StoreError(KittError):
    """A database operation failed; the caller sees it (never swallowed)."""


class StoreWriteError(StoreError):
    """A write did not commit."""


class StoreDataError(StoreWriteError):
    """The database refused the data itself (SQLSTATE class 22, e.g. a NUL character in text): a retry cannot
    succeed, so a message that caused it fails instead of being retried."""


class StaleLeaseError(StoreError):
    """A fenced write was refused because the lease token is no longer current."""


class InputRejected(KittError):
    """External input failed validation. ``reason`` is a short, metric-safe label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SpineError(KittError):
    """The MQTT spine could not do what was asked (not connected, publish failed)."""
