"""ssr: continual instruction tuning of LLMs with Self-Synthesized Rehearsal and its baselines."""

__version__ = "0.1.0"
