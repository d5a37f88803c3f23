"""Tasks and their loaders."""

from ssr.data.loaders import load_instances, load_task
from ssr.data.task import Instance, Task, training_row

__all__ = ["Instance", "Task", "load_instances", "load_task", "training_row"]
