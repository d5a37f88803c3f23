"""Crash safety with real processes on the tiny model: killed, stopped or signalled runs resume
to exactly the files of an uninterrupted run, and a run directory has one writer at a time.

The uninterrupted run of the same config is the reference (benchmarks/kill_harness.py, whose
reduced version runs here; the full one is in the README's reliability section).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kill_harness  # noqa: E402
from ssr.runlock import run_lock  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """The harness's config (SSR, two toy tasks, tiny model) and its uninterrupted reference run."""
    work = tmp_path_factory.mktemp("kill")
    config = kill_harness.build_setup(work)
    reference = kill_harness.own_folder(work, "reference")
    kill_harness.finish(kill_harness.start_run(config, reference))
    return {"work": work, "config": config, "reference": kill_harness.run_files(reference)}


def _wait_for(predicate, proc: kill_harness.RunProcess, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr()[-1500:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# The interruptions of one chain, in one directory (launches are most of this module's time):
# (phase whose run.log line the signal waits for, signal, the exit code a clean stop must give;
# None: SIGKILL, no chance to clean up). SIGTERM and SIGINT come after a SIGKILL of the same
# phase, so each also stops a rerun that resumes half-done work.
INTERRUPTIONS = (("training", signal.SIGKILL, None), ("training", signal.SIGTERM, 143),
                 ("synthesis", signal.SIGKILL, None), ("synthesis", signal.SIGINT, 130),
                 ("refinement", signal.SIGKILL, None))


def test_kills_and_signals_in_each_phase_resume_to_identical_files(harness):
    """The reduced harness, its interruptions chained in one directory to save launches: SIGKILL
    in training, the rerun stopped by SIGTERM in training, the next killed in synthesis, the next
    stopped by SIGINT in synthesis, the next killed in refinement; a clean stop exits 128+signal,
    says how to resume, prints no traceback and releases the lock; a kill leaves the lock naming
    the dead run, which the next launch takes over. The last rerun ends with every file of the
    uninterrupted run, and no temporary is left behind."""
    rng = random.Random(0)
    out = kill_harness.own_folder(harness["work"], "interrupted")
    for phase, sig, code in INTERRUPTIONS:
        marker = kill_harness.PHASES[phase]
        seen = kill_harness._log_count(out, marker)  # the earlier launches' lines stay in run.log
        proc = kill_harness.start_run(harness["config"], out)
        _wait_for(lambda: kill_harness._log_count(out, marker) > seen, proc, f"{phase} after {seen} earlier lines")
        time.sleep(rng.uniform(0.0, 0.03))  # the tiny model's steps take tens of milliseconds
        assert proc.poll() is None, f"the run finished before the {sig.name} in {phase}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        if code is None:
            assert json.loads((out / ".lock").read_text())["pid"] == proc.pid, "the killed run held the lock"
            continue
        assert proc.returncode == code, err.decode()[-1500:]
        assert "rerun the same command to resume" in err.decode()
        assert "Traceback" not in err.decode()
        assert (out / ".lock").read_text() == "", "the lock must be released (its holder cleared) on a clean stop"
    kill_harness.finish(kill_harness.start_run(harness["config"], out))  # takes the dead run's lock over
    assert kill_harness.compare(harness["reference"], out) == [], "resumed after interruptions in every phase: files differ"
    assert not [p for p in out.rglob(".*") if p.name != ".lock"], "an interrupted write's temporary was left behind"


def test_one_writer_per_run_directory_and_a_dead_writers_lock_is_taken_over(harness):
    out = kill_harness.own_folder(harness["work"], "locked")
    first = kill_harness.start_run(harness["config"], out)
    _wait_for(lambda: (out / ".lock").exists() and (out / ".lock").read_text().strip(), first, "the lock")
    first.send_signal(signal.SIGSTOP)  # keep it alive, holding the lock, while the others try
    try:
        holder = json.loads((out / ".lock").read_text())
        assert holder["pid"] == first.pid
        # `ssr run`, then `ssr sweep`, on the same directory: each refused, saying who holds it
        for argv in (["run", str(harness["config"]), "-o", str(out)],
                     ["sweep", str(harness["config"]), "-o", str(out), "--methods", "sequential"]):
            other = kill_harness.RunProcess(argv)
            err = other.communicate(timeout=300)[1].decode()
            assert other.returncode == 2, err
            assert f"is in use by pid {first.pid} on " in err and "Traceback" not in err, err
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: the lock file still names it
        first.wait()
    assert json.loads((out / ".lock").read_text())["pid"] == first.pid
    with run_lock(out):  # the stale lock is free (a killed run's rerun taking it over: the SIGKILL test)
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
