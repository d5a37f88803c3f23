"""The paper's regularisation baselines and PEFT's orthogonal subspace fine-tuning.

`l2` and `ewc` are sequential fine-tuning with a loss term (see `regularizers`); the same term
goes on top of replay or SSR with `method.regularizer`. `osf` is sequential fine-tuning
through another adapter type: the runner's `ModelState` attaches a PEFT OSF adapter each stage
(see `ssr.models.lora.attach_adapter`); nothing is rehearsed.
"""

from ssr.methods.base import Method


class L2(Method):
    name = "l2"


class EWC(Method):
    name = "ewc"


class OSF(Method):
    name = "osf"
