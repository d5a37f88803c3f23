"""Methods as plug-ins over the shared runner: pick one by `method.name`."""

from ssr.methods.base import Method, RehearsalMethod, Stage
from ssr.methods.mtl import MultiTask
from ssr.methods.regularized import EWC, L2, OSF
from ssr.methods.replay import Replay
from ssr.methods.sequential import Sequential
from ssr.methods.single import SingleTask
from ssr.methods.ssr import SelfSynthesizedRehearsal

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Sequential, Replay, MultiTask, SingleTask, SelfSynthesizedRehearsal, L2, EWC, OSF)
}


def get_method(name: str) -> type[Method]:
    return METHODS[name]


__all__ = ["Method", "RehearsalMethod", "Stage", "METHODS", "get_method"]
