"""TOML recipes: `extends`, overrides, validation and resolution into a `RunConfig`.

A recipe has the core sections of golfcore.config ([run], [data], [model], [optim],
[train], [eval], [export]) and one `[plugins.NAME]` table per enabled plugin, validated
against that plugin's Config. `extends = "base.toml"` (relative to the recipe) merges the
recipe over its base, key by key; `[plugins.NAME] enabled = false` drops a plugin the base
enabled. The command line then applies `--set section.key=value`, `--with NAME` and
`--without NAME`. Every mistake is a ConfigError naming the file and the key.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from .config import CORE_SECTIONS, RunConfig, build_section
from .errors import ConfigError
from .plugins import PluginInfo

TOP_LEVEL_KEYS = {"extends", "description"}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_recipe(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged raw table of `path` and its `extends` chain (not yet validated)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: extends cycle: {' -> '.join(str(p) for p in (*_seen, path.resolve()))}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a recipe file (e.g. recipes/quickstart.toml)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the recipe ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    for key, value in raw.items():
        if key in TOP_LEVEL_KEYS:
            continue
        if key != "plugins" and key not in CORE_SECTIONS:
            raise ConfigError(f"{path}: unknown section [{key}] (known: {', '.join([*CORE_SECTIONS, 'plugins'])})")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} must be a table")
    if "plugins" in raw:
        for name, table in raw["plugins"].items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: plugins.{name} must be a table ([plugins.{name}])")
    extends = raw.pop("extends", None)
    raw.pop("description", None)
    if extends is None:
        return raw
    if not isinstance(extends, str):
        raise ConfigError(f"{path}: extends must be a path string")
    base = read_recipe(path.parent / extends, (*_seen, path.resolve()))
    return _merge(base, raw)


def _parse_value(text: str) -> Any:
    """TOML value syntax (`3`, `0.5`, `true`, `[4, 5]`, `"all"`); bare words become strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], sets: list[str], with_: list[str], without: list[str], source: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    plugins = raw.setdefault("plugins", {})
    for name in set(with_) & set(without):
        raise ConfigError(f"{source}: --with {name} and --without {name} contradict each other; give one")
    for name in with_:
        plugins.setdefault(name, {})["enabled"] = True
    for name in without:
        if name not in plugins or plugins[name].get("enabled", True) is False:
            raise ConfigError(f"{source}: --without {name}: plugin {name!r} is not enabled in this recipe")
        plugins[name]["enabled"] = False
    for item in sets:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) not in (2, 3) or (len(parts) == 3) != (parts[0] == "plugins"):
            raise ConfigError(f"--set {item!r}: expected section.key=value or plugins.NAME.key=value")
        table = raw
        for part in parts[:-1]:
            table = table.setdefault(part, {})
        table[parts[-1]] = _parse_value(value.strip())
    return raw


def resolve(raw: dict[str, Any], available: dict[str, PluginInfo], source: str) -> RunConfig:
    """Validate a merged raw table into a RunConfig with every default filled in."""
    config = RunConfig(source=source)
    for name, cls in CORE_SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a table")
        setattr(config, name, _with_source(lambda: build_section(cls, table, f"[{name}]"), source))
    for section in raw:
        if section != "plugins" and section not in CORE_SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]")
    for name, table in raw.get("plugins", {}).items():
        table = dict(table)
        enabled = table.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{source}: [plugins.{name}] enabled must be true or false")
        if name not in available:
            known = ", ".join(sorted(available)) or "none"
            raise ConfigError(f"{source}: [plugins.{name}] unknown plugin (installed: {known})")
        if enabled:
            config.plugins[name] = _with_source(
                lambda: build_section(available[name].cls.Config, table, f"[plugins.{name}]"), source
            )
    _check_cross_section(config)
    _check_plugin_relations(config, available)
    return config


def _with_source(build, source: str):
    try:
        return build()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _check_cross_section(config: RunConfig) -> None:
    if config.eval_stride > config.eval_seq_len:
        raise ConfigError(f"{config.source}: [eval] stride {config.eval_stride} exceeds the eval seq_len {config.eval_seq_len}")


def _check_plugin_relations(config: RunConfig, available: dict[str, PluginInfo]) -> None:
    """Each enabled plugin's `requires` are enabled too and none of its `conflicts` is."""
    for name in config.plugins:
        cls = available[name].cls
        for needed in cls.requires:
            if needed not in config.plugins:
                raise ConfigError(f"{config.source}: plugin {name!r} requires plugin {needed!r}, which is not enabled")
        for other in cls.conflicts:
            if other in config.plugins:
                raise ConfigError(f"{config.source}: plugins {name!r} and {other!r} conflict; enable only one")


def load_recipe(
    path: Path,
    available: dict[str, PluginInfo],
    sets: list[str] = (),
    with_: list[str] = (),
    without: list[str] = (),
) -> RunConfig:
    """Read, merge, override and validate a recipe file."""
    source = str(path)
    recipe = read_recipe(Path(path))
    raw = apply_overrides(recipe, list(sets), list(with_), list(without), source)
    if not any(recipe.values()) and not (sets or with_):
        raise ConfigError(f"{source}: the recipe sets nothing, so it would train the full-size defaults (17M parameters, "
                          f"524,288-token batches); set its sections or start from one: extends = \"quickstart.toml\"")
    return resolve(raw, available, source)


def changed_keys(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """`section.key = new (was old)` for every value of two resolved recipes (RunConfig.to_dict) that differs."""
    out = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += changed_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key} = {new!r} (was {old!r})")
    return out


def dump_toml(config: RunConfig) -> str:
    """The resolved recipe as TOML (every default filled in), as saved in the run directory."""
    lines: list[str] = []
    data = config.to_dict()
    for name in CORE_SECTIONS:
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in data[name].items()]
        lines.append("")
    for name, table in data["plugins"].items():
        lines.append(f"[plugins.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")
