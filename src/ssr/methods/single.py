"""Single-task: one adapter per task, each trained from the base model on that task alone."""

from __future__ import annotations

from ssr.methods.base import FinalRowOnly, Stage


class SingleTask(FinalRowOnly):
    name = "single"

    def plan(self) -> list[Stage]:
        return [Stage(i, f"{i}-{t.name}", (t.name,), fresh=True, evaluate=(t.name,)) for i, t in enumerate(self.trained, 1)]

    def matrix(self, stage_scores):
        # Row i holds, for each task learnt so far, the score of its own model: the final row
        # is every task by its single-task model.
        # Learnt tasks (first columns) keep their base score: no single-task model trains them.
        names = [t.name for t in self.tasks]
        base = [stage_scores.get(0, {}).get(n) for n in names]
        L = len(self.learnt)
        rows = [base]
        for i in range(1, len(self.trained) + 1):
            rows.append(base[:L] + [stage_scores.get(j + 1, {}).get(n) if j < i else None
                                    for j, n in enumerate(names[L:])])
        return rows
