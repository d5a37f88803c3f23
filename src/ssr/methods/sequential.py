"""Non-rehearsal baseline: fine-tune on each task in turn (the behaviour is the base class's)."""

from ssr.methods.base import Method


class Sequential(Method):
    name = "sequential"
