"""Configuration problems: what a validator found, keyed by the config key the user should fix.

Validators return a list of :class:`Problem` (key + message) and raise them all at once in a :class:`ConfigError`.
A caller that knows where an object's config sits in the whole config (``data``, ``callbacks.wsc``) re-keys the
error with :meth:`ConfigError.under`, so the user reads ``data.image_size: ...``, never a key without its node. No
one parses messages back into keys.

The checks of plain options (counts, ranges, switches) are worded here once, for every validator.

No Lightning, Hydra or torch imports: the pure core and every layer above may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from wsca_lightning.plain import is_int

__all__ = ["ConfigError", "Problem", "integer_problems", "integer_range_problems", "raise_if", "switch_problems"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration.

    Attributes:
        key: the dotted config key to fix, relative to the object that was configured (``image_size``,
            ``metadata.scanner.column``); empty when the problem is about the object as a whole.
        message: what is wrong and what to do, without the key.
    """

    key: str
    message: str

    def under(self, prefix: str) -> "Problem":
        """The same problem, keyed from the config node ``prefix`` (``data`` turns ``image_size`` into
        ``data.image_size``)."""
        if not prefix:
            return self
        return Problem(f"{prefix}.{self.key}" if self.key else prefix, self.message)

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(ValueError):
    """One or more configuration problems, reported together; ``str()`` gives one problem per line.

    A ``ValueError``, so code that guards a constructor with ``except ValueError`` still catches it.
    """

    def __init__(self, problems: Problem | Iterable[Problem], title: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = (problems,) if isinstance(problems, Problem) else tuple(problems)
        if not self.problems:
            raise ValueError("ConfigError needs at least one Problem")
        self.title = title
        super().__init__(self._text())

    @classmethod
    def at(cls, key: str, message: str) -> "ConfigError":
        """A single problem at ``key``."""
        return cls(Problem(key, message))

    def under(self, prefix: str) -> "ConfigError":
        """The same problems keyed from the config node ``prefix``."""
        return ConfigError([p.under(prefix) for p in self.problems], self.title)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.problems]

    def _text(self) -> str:
        lines = [str(p) for p in self.problems]
        if self.title is None:
            return "\n".join(lines)
        count = len(lines)
        return f"{self.title} ({count} problem{'s' * (count > 1)}):\n  " + "\n  ".join(lines)


def raise_if(problems: Sequence[Problem], title: str | None = None) -> None:
    """Raise every problem at once, if there is any."""
    if problems:
        raise ConfigError(problems, title)


def integer_problems(limits: Sequence[tuple[str, Any, int]]) -> list[Problem]:
    """``<key>: must be an integer >= <minimum>, got ...`` for each ``(key, value, minimum)`` that fails."""
    return [Problem(key, f"must be an integer >= {minimum}, got {value!r}") for key, value, minimum in limits
            if not is_int(value) or value < minimum]


def integer_range_problems(key: str, value: object, limits: tuple[int, int]) -> list[Problem]:
    """``<key>: must be an integer in [low, high], got ...`` unless ``value`` is such an integer."""
    if not is_int(value) or not limits[0] <= value <= limits[1]:  # type: ignore[operator]
        return [Problem(key, f"must be an integer in [{limits[0]}, {limits[1]}], got {value!r}")]
    return []


def switch_problems(switches: Sequence[tuple[str, Any]]) -> list[Problem]:
    """``<key>: must be true or false, got ...`` for each ``(key, value)`` that is no bool."""
    return [Problem(key, f"must be true or false, got {value!r}") for key, value in switches
            if not isinstance(value, bool)]
