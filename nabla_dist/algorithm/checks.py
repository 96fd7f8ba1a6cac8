"""Range checks of settings, raised where a bad value is first seen.

Every settings dataclass (NablaConfig, EngineOptions, RuntimeOptions, …) checks its own
fields in `__post_init__` with `check`. The error carries the field name; the experiment
layer, which knows where the dataclass sits in the config tree, adds the path
(`rollout.top_p` becomes `method.rollout.top_p`).
"""

from __future__ import annotations


class InvalidSetting(ValueError):
    """`key=value is invalid: fix`; `under(prefix)` names the same setting by a longer path."""

    def __init__(self, key: str, value, fix: str):
        self.key, self.value, self.fix = key, value, fix
        super().__init__(f"{key}={value!r} is invalid: {fix}")

    def under(self, prefix: str) -> "InvalidSetting":
        return InvalidSetting(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.fix)


def check(ok: bool, key: str, value, fix: str) -> None:
    if not ok:
        raise InvalidSetting(key, value, fix)


def check_optional(value, key: str, ok, fix: str) -> None:
    """`value` is None (the setting is off) or `ok(value)`."""
    check(value is None or ok(value), key, value, f"{fix}, or null to turn it off")
