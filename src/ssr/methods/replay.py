"""RandSel / KMeansSel: replay a fraction of each previous task's *real* training data."""

from __future__ import annotations

from ssr.data.task import Task, training_row
from ssr.methods.base import RehearsalMethod, Stage
from ssr.selection import select, target_size


class Replay(RehearsalMethod):
    name = "replay"
    source = "replay"
    folder = "rehearsal"

    def build_rehearsal(self, task: Task, stage: Stage, ctx) -> list[dict]:
        m = self.cfg.method
        k = target_size(len(task.train), len(task.train), m.ratio, m.per_task)
        chosen = select(
            [inst.input for inst in task.train], k, m.selection_or_default, self.cfg.seed,
            n_clusters=m.n_clusters, embedding_model=m.embedding_model, embedding_pooling=m.embedding_pooling,
        )
        return [training_row(task.train[i], task.name, self.source) for i in chosen.indices]
