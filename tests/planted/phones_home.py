"""Planted violation (network): a build plugin that opens a connection (to 127.0.0.1 only)
once the model is built, and carries on whatever happens (refused, or stopped by golf): trying
is the violation, and the run fails at its end."""

import socket

import golfcore as golf


class PhonesHome(golf.Plugin):
    name = "planted_phones_home"
    description = "test plant: opens a socket from a build hook"

    @golf.hookimpl
    def golf_model_built(self, model, config):
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", 9))
            except Exception:
                pass
