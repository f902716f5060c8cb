"""The shortcut alarm: has the primary head used a watched metadata task for ``patience`` computed epochs in a row?

Plain Python on the analysis entries (no Lightning): :class:`AlarmSettings` is what the user configures under
``alarm``; :class:`ShortcutAlarm` counts, per watched task, the consecutive epochs whose task is interpretable and
significant, and says which tasks fired. Acting on it (a warning, or stopping training with the same decision on
every rank) is the callback's job.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from wsca_lightning.plain import to_plain
from wsca_lightning.problems import ConfigError, Problem, integer_problems
from wsca_lightning.summary import decision_p

__all__ = ["ALARM_ACTIONS", "AlarmSettings", "ShortcutAlarm"]

ALARM_ACTIONS: tuple[str, ...] = ("warn", "stop")


@dataclass(frozen=True)
class AlarmSettings:
    """The shortcut alarm: ``tasks`` the primary head must not use, and what to do when one of them is interpretable
    and significant (``p < alpha``) for ``patience`` consecutive computed epochs (``warn`` or ``stop``)."""

    tasks: tuple[str, ...] = ()
    action: str = "warn"
    alpha: float = 0.05
    patience: int = 3

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | None) -> "AlarmSettings":
        """The settings of the ``alarm`` mapping; raises :class:`ConfigError` keyed ``alarm.<key>``."""
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError.at("alarm", f"a mapping {{tasks, action, alpha, patience}}, got {value!r}")
        given = dict(value or {})
        for key, entry in given.items():
            try:
                to_plain(entry)
            except ValueError:
                raise ConfigError.at(f"alarm.{key}", f"{type(entry).__name__} is not a plain config value (use "
                                                     "numbers, strings, lists, dicts)") from None
        plain = {str(key): to_plain(entry) for key, entry in given.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(plain) - known)
        if unknown:
            raise ConfigError.at(f"alarm.{unknown[0]}", f"unknown key; valid keys: {', '.join(sorted(known))}")
        tasks = plain.get("tasks", ())
        if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks or ()):
            raise ConfigError.at("alarm.tasks", f"a list of metadata head names, got {tasks!r}")
        return cls(**{**plain, "tasks": tuple(tasks or ())})

    def problems(self) -> list[Problem]:
        out = []
        if self.action not in ALARM_ACTIONS:
            out.append(Problem("alarm.action", f"must be one of {', '.join(ALARM_ACTIONS)}, got {self.action!r}"))
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not 0.0 < self.alpha < 1.0:
            out.append(Problem("alarm.alpha", f"must be in (0, 1), got {self.alpha!r}"))
        out += integer_problems([("alarm.patience", self.patience, 1)])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "action": self.action, "alpha": self.alpha, "patience": self.patience}


class ShortcutAlarm:
    """The alarm's state: per watched task the count of consecutive significant epochs, and the first epoch at
    which the alarm went off (plain Python, saved in checkpoints)."""

    def __init__(self, settings: AlarmSettings) -> None:
        self.settings = settings
        self.counts: dict[str, int] = {t: 0 for t in settings.tasks}
        self.first_epoch: int | None = None

    def update(self, entry: Mapping[str, Any]) -> list[str]:
        """Advance the counters with one analysed epoch's entry; returns the tasks at or past ``patience``.

        A task counts an epoch when it is interpretable and its verdict's p is below ``alpha``; any other epoch
        resets it."""
        for name in self.settings.tasks:
            task = entry["tasks"][name]
            p = decision_p(task)
            hit = task["interpretable"] and p is not None and p < self.settings.alpha
            self.counts[name] = self.counts.get(name, 0) + 1 if hit else 0
        return [t for t in self.settings.tasks if self.counts[t] >= self.settings.patience]

    def went_off(self, epoch: int, fired: list[str], summary_path: str) -> str:
        """Record that the alarm went off at ``epoch`` (the first such epoch is kept); returns the warning."""
        if self.first_epoch is None:
            self.first_epoch = epoch
        names = fired or list(self.settings.tasks)
        return (
            f"WSC shortcut alarm at epoch {epoch}: the primary head aligns with {names} beyond the shortcut test's "
            f"nulls (p < {self.settings.alpha}) for at least {self.settings.patience} consecutive epoch(s) (now "
            f"{ {t: self.counts[t] for t in names} }), and the metadata is encoded (probe AUROC above chance). "
            f"See {summary_path}."
        )

    def summary(self) -> dict[str, Any]:
        """The ``alarm`` entry of ``wsc_summary.json``."""
        return {**self.settings.to_dict(), "counts": dict(self.counts), "first_epoch": self.first_epoch}

    def restore(self, counts: Mapping[str, Any], first_epoch: int | None) -> None:
        """The state saved in a checkpoint; tasks no longer watched are dropped, new ones start at 0."""
        self.counts = {t: int(counts.get(t, 0)) for t in self.settings.tasks}
        self.first_epoch = first_epoch
