"""Conditions: runs grouped by their command-line overrides (seeds are replicates), and the factors that differ.

``overrides.yaml`` is read with Hydra's own override parser (imported when the first run is read), so ``~key``,
``+key``/``++key``, ``key@package``, quoted values and sweeps mean what they mean on Hydra's command line.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wsca_lightning.report.records import DELETED, MISSING, NO_VALUE, Condition, OverrideValue, RunRecord
from wsca_lightning.report.statistics import is_number, natural_key


#: Override keys that say where or how a replicate ran, not which condition it belongs to.
IGNORED_KEYS = frozenset({"seed", "ckpt_path", "hydra", "paths"})
IGNORED_PREFIXES = ("hydra.", "paths.", "hydra/")



@dataclass(frozen=True)
class Sweep:
    """A sweep found in one run's overrides (``a,b``, ``choice(...)``, ``range(...)``, ``interval(...)``)."""

    levels: tuple[str, ...]  # sorted values as Hydra writes them, or the sweep as written when not enumerable


@functools.lru_cache(maxsize=1)
def _overrides_parser() -> Any:
    # imported here, not at module level: importing wsca_lightning.report stays free of Hydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_overrides(lines: Sequence[str], source: str | os.PathLike[str]) -> tuple[dict[str, OverrideValue], list[str]]:
    """The lines of an ``overrides.yaml`` read by Hydra's own override parser, by key (``key@package`` when a package
    is given; a later line for the same key wins, as in Hydra), and notes naming ``source`` for lines that do not
    parse or hold a sweep. ``+key``/``++key`` group with ``key``; ``~key`` reads as the key not being set."""
    from hydra.errors import HydraException

    parser = _overrides_parser()
    values: dict[str, OverrideValue] = {}
    notes: list[str] = []
    for number, line in enumerate(lines, start=1):
        try:
            (override,) = parser.parse_overrides([line])
        except (HydraException, ValueError, TypeError) as err:
            reason = " ".join(str(err).split("\n")[0].split())
            # kept apart as its own key: runs with different unreadable lines must not merge into one condition
            notes.append(f"{source}: item {number} {line!r} is not a Hydra override ({reason}): grouped by its text; "
                         "write it as key=value (see Hydra's override grammar) to group it by key")
            values[line] = OverrideValue(key=line, key_or_group=line, value=line, display="(unparsed)", text=line)
            continue
        group = override.key_or_group
        key = group if override.package is None else f"{group}@{override.package}"
        if override.is_delete():
            value: Any = NO_VALUE
            display = DELETED
        elif override.is_sweep_override():
            display = override.get_value_string().strip()
            levels: tuple[str, ...] = (display,)  # a range may be long and an interval has no levels: as written
            if override.is_choice_sweep():
                try:
                    levels = tuple(sorted(override.sweep_string_iterator()))  # so `a,b` equals `choice(b,a)`
                except HydraException:  # a glob needs Hydra's config repository
                    pass
            value = Sweep(levels)
            notes.append(f"{source}: item {number} {line!r} is a sweep, not one value (a job's overrides.yaml holds "
                         "the value it ran with): grouped as the sweep written; check which value this run used")
        else:
            value = override.value()  # quoted strings stay strings: '1.0' is not 1.0
            display = override.get_value_string().strip()
        values[key] = OverrideValue(key=key, key_or_group=group, value=value, display=display, text=line)
    return values, notes


def _is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _canonical(value: Any) -> str:
    """A comparison key for a value: ``1`` and ``1.0`` are the same level."""

    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, Sweep):  # never equal to a value, nor to the quoted string 'a,b'
            return {"(sweep)": list(v.levels)}
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return str(v)

    return json.dumps(norm(value), sort_keys=True, default=str)


def config_value(config: Any, key: str) -> Any:
    """``key``'s value in a run's resolved config (plain Python), or ``MISSING``."""
    from omegaconf import OmegaConf

    try:
        node = OmegaConf.select(config, key, default=MISSING, throw_on_resolution_failure=False)
        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
        return node
    except Exception:  # noqa: BLE001 - an unresolvable interpolation is a missing value here
        return MISSING


def _value_for(run: RunRecord, key: str, overrides: Mapping[str, OverrideValue]) -> tuple[Any, str]:
    """(parsed value, display text) of a condition key for one run: its override, else its config-group choice or
    config value, so a run that left a key at its default still compares equal to one that set it to that value."""
    if key in overrides:
        return overrides[key].value, overrides[key].display
    if key in run.choices:
        choice = run.choices[key]
        return choice, str(choice)
    if run.config is not None and not {"@", "/"} & set(key):  # config groups (and packages) live in the choices
        value = config_value(run.config, key)
        if value is not MISSING and not isinstance(value, dict):
            return value, json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
    return NO_VALUE, NO_VALUE


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, float(value)) if is_number(value) else (1, _canonical(value))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "x"


def group_conditions(runs: Sequence[RunRecord]) -> tuple[list[Condition], list[str]]:
    """Group runs into conditions (same overrides, seed and paths aside) and name the factors.

    Returns the conditions, sorted by their factor values, and the factors: override keys, in command-line order,
    whose values differ across conditions. Each run's ``condition`` is set.
    """
    per_run: list[dict[str, OverrideValue]] = []
    keys: list[str] = []
    for run in runs:
        mapping = {key: o for key, o in run.parsed_overrides().items() if not _is_ignored(o.key_or_group)}
        keys += [key for key in mapping if key not in keys]
        per_run.append(mapping)

    groups: dict[tuple[str, ...], Condition] = {}
    for run, mapping in zip(runs, per_run):
        parsed = {key: _value_for(run, key, mapping) for key in keys}
        ident = tuple(_canonical(parsed[key][0]) for key in keys)
        if ident not in groups:
            groups[ident] = Condition(id="", values={k: v for k, (v, _) in parsed.items()},
                                      display={k: d for k, (_, d) in parsed.items()}, runs=[])
        groups[ident].runs.append(run)
        run.condition = groups[ident]

    conditions = list(groups.values())
    factors = [key for key in keys if len({_canonical(c.values[key]) for c in conditions}) > 1]
    conditions.sort(key=lambda c: [_sort_key(c.values[key]) for key in factors])
    for index, condition in enumerate(conditions, start=1):
        condition.id = f"c{index}"
        condition.label = ", ".join(f"{key}={condition.display[key]}" for key in factors) or "all runs"
        slug = "_".join(f"{key.split('.')[-1]}-{condition.display[key]}" for key in factors)
        condition.slug = f"{condition.id}_{_slug(slug)}" if factors else condition.id
        condition.runs.sort(key=lambda r: (_sort_key(r.seed), natural_key(r.name)))
    return conditions, factors


@dataclass
class Trend:
    factor: str
    series: list[tuple[str, list[Condition]]]  # (other factors' values, conditions sorted by the factor)


def trend_design(conditions: Sequence[Condition], factors: Sequence[str]) -> Trend | None:
    """The one numeric factor, and the conditions split into series by the other factors; None unless exactly one
    factor has only numeric levels."""
    numeric = [f for f in factors if all(is_number(c.values[f]) for c in conditions)]
    if len(numeric) != 1:
        return None
    factor = numeric[0]
    others = [f for f in factors if f != factor]
    series: dict[str, list[Condition]] = {}
    for condition in conditions:
        name = ", ".join(f"{f}={condition.display[f]}" for f in others)
        series.setdefault(name, []).append(condition)
    return Trend(factor, [(name, sorted(cs, key=lambda c: float(c.values[factor]))) for name, cs in series.items()])
