"""The plugin manager: discovery of installed plugins and the per-run host of enabled ones.

A plugin is a class: a `name`, a one-line `description`, a typed `Config` (a dataclass
deriving from `golfcore.Section`) and `@hookimpl` methods that read `self.config`.
Built-ins (modules of `golf_plugins`), entry points in group `golf.plugins` and modules in
`--plugins-dir` folders are discovered the same way. Being installed is not enough to run:
`Host` registers only the plugins the resolved recipe enables.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ClassVar

import pluggy

from . import hookspecs
from .config import RunConfig, Section
from .errors import ConfigError, GolfError, PluginError

ENTRY_POINT_GROUP = "golf.plugins"


@dataclass
class NoConfig(Section):
    """For plugins without options."""


class Plugin:
    """Base class of every golf plugin.

    A plugin that keeps training state across steps (an EMA shadow, SWA sums, counters)
    overrides `state_dict` / `load_state_dict` so checkpoints carry it and a resumed run
    continues bit-identically (docs/writing-plugins.md, "Training state").
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[Section]] = NoConfig
    phase: ClassVar[str | None] = None  # "train" or "eval"; None: inferred by acts_only_at_eval
    requires: ClassVar[tuple[str, ...]] = ()  # plugins that must be enabled beside this one
    conflicts: ClassVar[tuple[str, ...]] = ()  # plugins that must not be enabled with this one

    document_aware = False
    """True (or a property reading the config) when the plugin claims that nothing it computes
    after a BOS depends on the previous document; `golf audit` probes the claim."""

    def __init__(self, config: Section | None = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def acts_only_at_eval(cls) -> bool:
        """True when the plugin changes nothing before the artifact is written, so removing it
        needs a re-score, not a retraining: its declared phase, else all its hooks belong to the
        "eval" or "config" phase (as hookspecs.py declares each hook's phase)."""
        if cls.phase is not None:
            return cls.phase == "eval"
        hooks = {n for n in dir(cls) if n.startswith("golf_") and callable(getattr(cls, n))}
        return bool(hooks) and {hookspecs.phase_of(h) for h in hooks} <= {"eval", "config"}

    def state_dict(self) -> dict[str, Any]:
        """The plugin's training state: nested dicts/lists/tuples of tensors, numbers, strings,
        bools and None (saved as safetensors + JSON, never pickled). Called on rank 0 at a step
        boundary; the default, for stateless plugins, is {}."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, with tensors already on the run's device; called
        after the model and optimizers are built, before the first resumed step."""


@dataclass
class PluginInfo:
    """An installed plugin, as `golf plugins` lists it."""

    name: str
    cls: type[Plugin]
    source: str  # "builtin", "entry point (dist)" or the file it was loaded from
    version: str

    @property
    def hooks(self) -> list[str]:
        return sorted(n for n in dir(self.cls) if n.startswith("golf_") and callable(getattr(self.cls, n)))

    @property
    def module(self) -> ModuleType:
        return sys.modules[self.cls.__module__]


def _plugin_classes(module: ModuleType) -> list[type[Plugin]]:
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Plugin) and obj is not Plugin and obj.__module__ == module.__name__
    ]


def _check_class(cls: type[Plugin], source: str) -> None:
    if not cls.name or not cls.name.isidentifier():
        raise ConfigError(f"plugin class {cls.__qualname__} from {source} needs a `name` that is an identifier")
    if not dataclasses.is_dataclass(cls.Config) or not issubclass(cls.Config, Section):
        raise ConfigError(f"plugin {cls.name!r} from {source}: Config must be a dataclass deriving from golfcore.Section")


def plugins_in(module: ModuleType, source: str, version: str) -> list[PluginInfo]:
    """The plugins a module defines, checked as `discover` checks them (an exported
    train_gpt.py lists its bundled plugins with it)."""
    classes = _plugin_classes(module)
    for cls in classes:
        _check_class(cls, source)
    return [PluginInfo(cls.name, cls, source, version) for cls in classes]


def _load_file(path: Path) -> ModuleType:
    module_name = f"golf_dir_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a broken third-party file is a user error, reported in one line
        del sys.modules[module_name]
        raise ConfigError(f"{path}: failed to import: {type(e).__name__}: {e}") from None
    return module


def discover(plugins_dirs: list[Path] = ()) -> dict[str, PluginInfo]:
    """Every installed plugin by name: built-ins, entry points, then `plugins_dirs`."""
    found: dict[str, PluginInfo] = {}
    golf_version = importlib.metadata.version("golf")

    def add(cls: type[Plugin], source: str, version: str) -> None:
        _check_class(cls, source)
        if cls.name in found and found[cls.name].cls is not cls:
            raise ConfigError(f"plugin name {cls.name!r} is provided twice: by {found[cls.name].source} and by {source}")
        found[cls.name] = PluginInfo(cls.name, cls, source, version)

    import golf_plugins

    for info in pkgutil.iter_modules(golf_plugins.__path__):
        module = importlib.import_module(f"golf_plugins.{info.name}")
        for cls in _plugin_classes(module):
            add(cls, "builtin", golf_version)

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        try:
            target = ep.load()
        except Exception as e:
            raise ConfigError(f"entry point {ep.name!r} of {dist} failed to load: {type(e).__name__}: {e}") from None
        classes = _plugin_classes(target) if inspect.ismodule(target) else [target]
        for cls in classes:
            if not (inspect.isclass(cls) and issubclass(cls, Plugin)):
                raise ConfigError(f"entry point {ep.name!r} of {dist} is not a golfcore.Plugin subclass or module")
            add(cls, f"entry point ({dist})", version)

    for folder in plugins_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"--plugins-dir {folder}: not a directory")
        for path in sorted(folder.glob("*.py")):
            for cls in _plugin_classes(_load_file(path)):
                add(cls, str(path), "local")
    return found


def _answer_type(spec_function: Callable) -> Any:
    """A hook spec's return annotation, evaluated; None for a hook whose answers are not used."""
    import torch

    from . import contract

    annotation = spec_function.__annotations__.get("return")
    namespace = {**vars(hookspecs), **vars(contract), **vars(sys.modules["golfcore"]), "torch": torch, "nn": torch.nn,
                 "RunConfig": RunConfig}
    try:
        annotation = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307 (golf's own spec text)
    except Exception:
        return None
    return None if annotation in (None, type(None)) else annotation


def _fits(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is collections.abc.Callable or annotation is Callable:
        return callable(value)
    if annotation is Any:
        return True
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type) and getattr(annotation, "_is_protocol", False):
        members = [n for n in (*vars(annotation), *getattr(annotation, "__annotations__", {})) if not n.startswith("_")]
        return all(hasattr(value, n) for n in members)
    return not isinstance(annotation, type) or isinstance(value, annotation)


def _checked(function: Callable, expected: Any, plugin: str, hook: str) -> Callable:
    @functools.wraps(function)
    def checked(*args, **kwargs):
        answer = function(*args, **kwargs)
        if answer is not None and not _fits(answer, expected):
            shown = str(expected).replace("typing.", "").replace("torch.nn.modules.module.", "nn.")
            raise PluginError(f"plugin {plugin!r}: {hook} returned {type(answer).__name__} {answer!r:.60}; "
                              f"the hook expects {shown}")
        return answer

    return checked


class Host:
    """The run's plugin manager: the enabled plugins, registered in recipe order.

    Every hook is called through pluggy, so hook wrappers, tryfirst/trylast and tracing work
    as pluggy documents them. `first` / `collect` / `call` add golf's rules on what comes back.
    """

    def __init__(self, config: RunConfig, available: dict[str, PluginInfo], trace: Callable[[str], None] | None = None):
        self.config = config
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, Plugin] = {}
        # pluggy calls implementations last-registered-first; registering in reverse recipe
        # order makes collected results come back in recipe order.
        for name in reversed(list(config.plugins)):
            info = available[name]
            plugin = info.cls(config.plugins[name])
            try:
                self.pm.register(plugin, name=name)
            except pluggy.PluginValidationError as e:
                raise ConfigError(f"plugin {name!r}: {e}") from None
            self.plugins[name] = plugin
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            name = self.pm.get_name(e.plugin) if e.plugin is not None else "?"
            raise ConfigError(f"plugin {name!r}: {str(e).split(' in plugin ')[0]}") from None
        self._check_single_answer_hooks()
        self._check_answer_types()
        self._modules = {available[name].cls.__module__: name for name in config.plugins}
        if trace is not None:
            self.pm.add_hookcall_monitoring(lambda *a: None, self._tracer(trace))

    def _check_single_answer_hooks(self) -> None:
        """Two plugins answering a firstresult hook at the same precedence would make the winner
        an accident of registration order: refuse it, unless one says tryfirst/trylast."""
        for caller in self.pm.hook.__dict__.values():
            if not isinstance(caller, pluggy.HookCaller) or not caller.spec or not caller.spec.opts.get("firstresult"):
                continue
            by_rank: dict[int, list[str]] = {}
            for impl in caller.get_hookimpls():
                if not (impl.wrapper or impl.hookwrapper):
                    by_rank.setdefault(impl.tryfirst - impl.trylast, []).append(impl.plugin_name)
            for names in by_rank.values():
                if len(names) > 1:
                    both = " and ".join(repr(n) for n in reversed(names))
                    raise ConfigError(
                        f"{self.config.source}: plugins {both} both implement {caller.name}; enable only one, "
                        f"or mark the override @hookimpl(tryfirst=True)"
                    )

    def _check_answer_types(self) -> None:
        """Wrap every implementation so that an answer of the wrong type (a str where the hook
        spec's return annotation says a module) is a PluginError naming the plugin and the hook."""
        for caller in self.pm.hook.__dict__.values():
            if not isinstance(caller, pluggy.HookCaller) or not caller.spec:
                continue
            expected = _answer_type(caller.spec.function)
            if expected is None:
                continue
            for impl in caller.get_hookimpls():
                if not (impl.wrapper or impl.hookwrapper):
                    impl.function = _checked(impl.function, expected, impl.plugin_name, caller.name)

    def implementers(self, hook_name: str) -> list[str]:
        """The enabled plugins implementing `hook_name`, in the order pluggy calls them (recipe
        order, tryfirst/trylast honoured); hook wrappers are not implementations."""
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        return list(dict.fromkeys(i.plugin_name for i in reversed(impls) if not (i.wrapper or i.hookwrapper)))

    def call_one(self, plugin_name: str, hook_name: str, **kwargs: Any) -> Any:
        """Call one plugin's implementation of `hook_name`, inside every plugin's wrappers of it."""
        wrappers = {i.plugin_name for i in getattr(self.pm.hook, hook_name).get_hookimpls() if i.wrapper or i.hookwrapper}
        others = [p for name, p in self.plugins.items() if name != plugin_name and name not in wrappers]
        return self._invoke(hook_name, kwargs, self.pm.subset_hook_caller(hook_name, remove_plugins=others))

    def _invoke(self, hook_name: str, kwargs: dict[str, Any], caller: Callable | None = None) -> Any:
        try:
            return (caller or getattr(self.pm.hook, hook_name))(**kwargs)
        except GolfError:
            raise
        except Exception as e:
            culprit = self._raising_plugin(hook_name, e)
            if culprit is None:  # not raised by a plugin's hook code: a bug in golf, keep the traceback
                raise
            raise PluginError(f"plugin {culprit!r} raised in {hook_name}: {type(e).__name__}: {e}") from e

    def _raising_plugin(self, hook_name: str, error: BaseException) -> str | None:
        """The plugin whose implementation of `hook_name` is on the exception's traceback (innermost)."""
        codes = {inspect.unwrap(impl.function).__code__: impl.plugin_name
                 for impl in getattr(self.pm.hook, hook_name).get_hookimpls()}
        culprit, tb = None, error.__traceback__
        while tb is not None:
            culprit = codes.get(tb.tb_frame.f_code, culprit)
            tb = tb.tb_next
        return culprit

    def _tracer(self, write: Callable[[str], None]) -> Callable:
        def after(outcome, hook_name: str, hook_impls, kwargs) -> None:
            called = ", ".join(impl.plugin_name for impl in reversed(hook_impls)) or "none"
            where = f" layer {kwargs['layer'].virtual}" if "layer" in kwargs else ""
            if outcome.exception is not None:
                write(f"hook {hook_name}{where}: called {called}; raised {type(outcome.exception).__name__}")
                return
            result = outcome.get_result()
            answers = result if isinstance(result, list) else [] if result is None else [result]
            answered = ", ".join(f"{self._owner(a)}: {type(a).__name__}" for a in answers) or "nobody (core default)"
            write(f"hook {hook_name}{where}: called {called}; answered by {answered}")

        return after

    def _owner(self, answer: Any) -> str:
        """The enabled plugin whose module defined `answer`'s class (or function)."""
        module = getattr(answer, "__module__", None) if callable(answer) and not isinstance(answer, type) else None
        module = module if module in self._modules else type(answer).__module__
        return self._modules.get(module, module or "?")

    def collect(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """All non-None answers, sorted by their `order` attribute (stable: ties in call order)."""
        return sorted(self._invoke(hook_name, kwargs), key=lambda a: getattr(a, "order", 0))

    def first(self, hook_name: str, **kwargs: Any) -> Any:
        """The answer of a single-answer (firstresult) hook, or None when no plugin answers."""
        return self._invoke(hook_name, kwargs)

    def call(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation, for hooks with side effects only."""
        self._invoke(hook_name, kwargs)
