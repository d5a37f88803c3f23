"""The method plug-in interface: what each stage learns, what is kept for later stages.

A method never trains or evaluates by itself; the runner does that for every method alike.
A method only answers: which stages are there (`plan`), what does a stage train on
(`training_rows`), what is kept after it (`after_stage`), which loss term it adds
(`regularizer`), and how stage scores form the (T+1) x T matrix (`matrix`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ssr.data.task import Task, training_row
from ssr.evaluation import continual_metrics
from ssr.io import read_jsonl, write_jsonl
from ssr.methods.regularizers import Regularizer, regularizer_for

if TYPE_CHECKING:
    from ssr.runner import RunContext


@dataclass(frozen=True)
class Stage:
    index: int
    """1-based stage number (0 is the base model)."""
    name: str
    """Directory name under stages/, e.g. `2-trans`."""
    tasks: tuple[str, ...]
    """Tasks whose training data this stage learns."""
    fresh: bool = False
    """Start from the base model with a new adapter instead of continuing the previous one."""
    evaluate: tuple[str, ...] = field(default_factory=tuple)
    """Tasks evaluated after this stage."""


class Method:
    """Sequential fine-tuning: one stage per task, each on its own data (non-rehearsal)."""

    name = "sequential"

    def __init__(self, cfg, tasks: list[Task]):
        self.cfg = cfg
        self.tasks = tasks
        self.by_name = {t.name: t for t in tasks}
        self.learnt = [t for t in tasks if t.learnt]
        """Tasks the base model already knows (stage 0): evaluated, never trained."""
        self.trained = [t for t in tasks if not t.learnt]
        """The tasks of stages 1, 2, ...: one stage each for a sequence."""
        self.regularizer: Regularizer | None = regularizer_for(cfg, cfg.seed)
        """A loss term anchoring each stage to the previous one (L2 / EWC), or None."""

    def plan(self) -> list[Stage]:
        return [Stage(i, f"{i}-{t.name}", (t.name,), fresh=i == 1, evaluate=self.evaluated_after(i))
                for i, t in enumerate(self.trained, 1)]

    def learnt_stage(self) -> Stage | None:
        """Stage 0 when tasks are `learnt`: the base model itself, after which their rehearsal
        sets are built (None without learnt tasks)."""
        if not self.learnt:
            return None
        return Stage(0, "0-base", tuple(t.name for t in self.learnt), fresh=True,
                     evaluate=tuple(t.name for t in self.tasks))

    def evaluated_after(self, stage_index: int) -> tuple[str, ...]:
        """Tasks scored after stage `stage_index` of a sequence: all of them, or with
        `eval.schedule: metrics` only those AR / FWT / BWT read (a_i(i), a_{i+1}(i), a_j(T));
        learnt tasks are scored before training and after the last stage."""
        names = tuple(t.name for t in self.trained)
        if self.cfg.eval.schedule == "all" or stage_index == len(names):
            return tuple(t.name for t in self.tasks)
        return names[stage_index - 1 : stage_index + 1]

    def task_index(self, name: str) -> int:
        """Position of task `name` in the config's `tasks` (to name its fields in errors)."""
        return next(i for i, t in enumerate(self.cfg.tasks) if t.name == name)

    def check(self) -> list[str]:
        """What would stop this method's run, found before any model loads: one error line each
        (`file:line: field 'x': ...`). The rule for all: every task a stage trains on has
        training rows. Methods with more needs extend it."""
        problems = []
        for stage in self.plan():
            for name in stage.tasks:
                if not self.by_name[name].train:
                    problems.append(self.cfg.problem(
                        ("tasks", self.task_index(name), "train"),
                        f"stage {stage.name} of {self.name} trains on task {name!r}, which has no training rows; "
                        "give it a `train` file"))
        return problems

    def planned_rows(self, stage: Stage) -> dict[str, int]:
        """Training rows of `stage` by `task/source`, as known before the run (for `ssr validate`)."""
        return {f"{name}/new": len(self.by_name[name].train) for name in stage.tasks}

    def new_rows(self, stage: Stage) -> list[dict]:
        return [training_row(inst, name, "new") for name in stage.tasks for inst in self.by_name[name].train]

    def training_rows(self, stage: Stage, ctx: RunContext) -> list[dict]:
        return self.new_rows(stage)

    def after_stage(self, stage: Stage, ctx: RunContext) -> None:
        """Hook run after a stage is trained and evaluated (e.g. build a rehearsal set)."""

    def pending_after(self, stage: Stage, ctx: RunContext) -> bool:
        """Whether `after_stage` still has work to do (a resumed run skips finished work)."""
        return False

    def matrix(self, stage_scores: dict[int, dict[str, float]]) -> list[list[float | None]]:
        """scores[i][j] = task j after stage i; row 0 = base model; learnt tasks are the first columns."""
        names = [t.name for t in self.tasks]
        return [[stage_scores.get(i, {}).get(n) for n in names] for i in range(len(self.trained) + 1)]

    def metrics(self, scores: list[list[float | None]]) -> dict[str, float | None]:
        """AR / FWT / BWT of the matrix over the trained tasks (see `continual_metrics`)."""
        return continual_metrics(scores, learnt=len(self.learnt))


class FinalRowOnly(Method):
    """Methods whose models do not form a sequence (mtl, single): only AR, the final row's mean."""

    def metrics(self, scores):
        return {"AR": continual_metrics(scores, learnt=len(self.learnt))["AR"], "FWT": None, "BWT": None}


class RehearsalMethod(Method):
    """A method that keeps a frozen rehearsal set per finished task and replays it later."""

    source = "replay"
    folder = "rehearsal"
    def rehearsal_path(self, ctx: RunContext, task: str) -> Path:
        return ctx.run_dir / self.folder / f"{task}.jsonl"

    def build_rehearsal(self, task: Task, stage: Stage, ctx: RunContext) -> list[dict]:
        raise NotImplementedError

    def rehearsal_size(self, task: Task) -> int:
        """How many instances of `task` are rehearsed (for SSR: at most this many)."""
        from ssr.selection import target_size

        m = self.cfg.method
        return target_size(len(task.train), len(task.train), m.ratio, m.per_task)

    def rehearsed_before(self, stage: Stage) -> list[Task]:
        """The tasks whose rehearsal sets `stage` replays: the learnt ones, then the earlier stages'."""
        return self.learnt + self.trained[: stage.index - 1]

    def rehearsed_tasks(self) -> list[Task]:
        """Every task that gets a rehearsal set: all but the last trained one."""
        return self.learnt + self.trained[:-1]

    def check(self) -> list[str]:
        """Also: a learnt task rehearsed by its own data size needs training rows to size it
        (or `method.per_task`)."""
        problems = super().check()
        for task in self.learnt:
            if not task.train and self.cfg.method.per_task is None:
                problems.append(self.cfg.problem(
                    ("tasks", self.task_index(task.name), "train"),
                    f"learnt task {task.name!r} has no training rows: {self.name} sizes its rehearsal set by "
                    "method.ratio of them; give a `train` file or method.per_task"))
        return problems

    def planned_rows(self, stage: Stage) -> dict[str, int]:
        rows = super().planned_rows(stage)
        for previous in self.rehearsed_before(stage):
            rows[f"{previous.name}/{self.source}"] = self.rehearsal_size(previous)
        return rows

    def pending_after(self, stage: Stage, ctx: RunContext) -> bool:
        last = stage.index == len(self.trained)  # nothing comes after the last stage
        return not last and any(not self.rehearsal_path(ctx, t).exists() for t in stage.tasks)

    collective = False
    """Whether `build_rehearsal` runs on every process of a launch together (it generates through
    `ctx.generator_after`, which they share) or on the main process alone while the others wait."""

    def after_stage(self, stage: Stage, ctx: RunContext) -> None:
        if not self.pending_after(stage, ctx):
            return
        for name in stage.tasks:
            path = self.rehearsal_path(ctx, name)
            if path.exists():
                continue
            if self.collective:
                rows = self.build_rehearsal(self.by_name[name], stage, ctx)
                ctx.write(write_jsonl, path, rows)
            else:
                ctx.write(lambda: write_jsonl(path, self.build_rehearsal(self.by_name[name], stage, ctx)))

    def training_rows(self, stage: Stage, ctx: RunContext) -> list[dict]:
        rows = self.new_rows(stage)
        for previous in self.rehearsed_before(stage):
            rows += read_jsonl(self.rehearsal_path(ctx, previous.name))
        return rows
