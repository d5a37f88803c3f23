"""Methods as plug-ins over the shared runner: pick one by `method.name`."""

from ssr.methods.base import Method, RehearsalMethod, Stage
from ssr.methods.mtl import MultiTask
from ssr.methods.replay import Replay
from ssr.methods.sequential import Sequential
from ssr.methods.single import SingleTask

METHODS: dict[str, type[Method]] = {m.name: m for m in (Sequential, Replay, MultiTask, SingleTask)}


def get_method(name: str) -> type[Method]:
    if name == "ssr" and "ssr" not in METHODS:
        from ssr.methods.ssr import SelfSynthesizedRehearsal

        METHODS["ssr"] = SelfSynthesizedRehearsal
    return METHODS[name]


__all__ = ["Method", "RehearsalMethod", "Stage", "METHODS", "get_method"]
