"""Multi-task learning: every task's training data at once, from the base model (AR upper bound)."""

from __future__ import annotations

from ssr.methods.base import FinalRowOnly, Stage


class MultiTask(FinalRowOnly):
    name = "mtl"

    def plan(self) -> list[Stage]:
        # Learnt tasks are not trained here either: MTL is the bound on what the stages learn.
        names = tuple(t.name for t in self.trained)
        return [Stage(1, "1-mtl", names, fresh=True, evaluate=tuple(t.name for t in self.tasks))]

    def matrix(self, stage_scores):
        # One model: its scores form the final row; rows between base and final stay empty.
        names = [t.name for t in self.tasks]
        rows: list[list[float | None]] = [[None] * len(names) for _ in range(len(self.trained) + 1)]
        rows[0] = [stage_scores.get(0, {}).get(n) for n in names]
        rows[-1] = [stage_scores.get(1, {}).get(n) for n in names]
        return rows
