"""golf core: a minimal GPT, its training loop, evaluation and artifact, extended through plugins.

What a plugin author needs is importable from here:

    import golfcore as golf

    class Shout(golf.Plugin):
        name = "shout"
        description = "..."
        Config = MyConfig           # a @dataclass deriving from golf.Section, fields made with golf.option
        @golf.hookimpl
        def golf_mlp_activation(self, config, layer): ...
"""

from .config import Section, option
from .errors import ConfigError, GolfError
from .hookspecs import hookimpl
from .model import LayerInfo
from .params import declare
from .plugins import Plugin

__all__ = ["ConfigError", "GolfError", "LayerInfo", "Plugin", "Section", "declare", "hookimpl", "option"]
