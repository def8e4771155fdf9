"""What a user sees while a run goes: one line per finished step, failures, a summary.

A run of several subjects takes minutes to hours; nipype's own log says little at its default
level and far too much at INFO. bids_dl's messages go to stderr, as logging does; stdout keeps
only what a command was asked to print (the dry-run plan, ``--version``).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from bids_dl.config import Config

LOGGER = logging.getLogger("bids_dl.progress")
#: A node's full name in the run's graph: ``bids_dl_wf.single_subject_<label>_wf.<step>``.
SUBJECT_STEP = re.compile(r"\bsingle_subject_(?P<label>[a-zA-Z0-9]+)_wf\.(?P<step>.+)$")


class MessageFormatter(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors say their level."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"{record.asctime} {level}{record.message}"


def setup_logging(verbosity: int) -> None:
    """bids_dl's messages on stderr: errors only at -1 (``--quiet``), progress from 0, debug
    from 2 (``-vv``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(MessageFormatter())
    logger = logging.getLogger("bids_dl")
    logger.handlers = [handler]  # one handler, also when the command runs again in a process
    if verbosity < 0:
        logger.setLevel(logging.ERROR)
    else:
        logger.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    logger.propagate = False


class Progress:
    """nipype's ``status_callback``: the plugins call it in the main process with a node and
    ``start``, ``end`` or ``exception``.

    At the default verbosity a line says when a step finished and how long it took, and a
    failed step says where its crash file is; ``-v`` adds the steps that start, the ones reused
    from the work dir and the derivative writers.
    """

    def __init__(self, config: Config) -> None:
        self.verbosity = config.execution.verbosity
        self.started_at = datetime.now(UTC)
        #: the steps that ended (computed or reused), per subject
        self.ended: dict[str, set[str]] = defaultdict(set)
        self._config = config

    def __call__(self, node, status: str) -> None:
        try:
            self._report(node, status)
        except Exception as error:  # a progress line is never worth stopping the run
            LOGGER.debug("no progress line for %s (%s)", node.fullname, error)

    def _report(self, node, status: str) -> None:
        found = SUBJECT_STEP.search(node.fullname)
        if found is None:
            return
        label, step = found["label"], found["step"]
        prefix = f"[sub-{label}] {step}"
        if status == "exception":
            LOGGER.error("%s  failed; crash file in %s", prefix, self._log_dir(label))
        elif status == "start" and self.verbosity > 0:
            LOGGER.info("%s  started", prefix)
        elif status == "end":
            self.ended[label].add(step)
            self._report_end(node, prefix)

    def _report_end(self, node, prefix: str) -> None:
        started, duration = _runtime(node)
        if started < self.started_at:
            if self.verbosity > 0:
                LOGGER.info("%s  reused from the work dir", prefix)
        elif self.verbosity > 0 or not node.run_without_submitting:
            LOGGER.info("%s  finished in %.1f s", prefix, duration)

    def _log_dir(self, label: str) -> Path:
        from bids_dl.workflows.base import subject_log_dir

        execution = self._config.execution
        return subject_log_dir(execution.output_dir, label, execution.run_uuid)

    def unfinished(self, workflow, labels) -> list[str]:
        """The subjects of ``labels`` that have a step of ``workflow`` that did not end."""
        return [label for label in labels if subject_steps(workflow, label) - self.ended[label]]


def _runtime(node) -> tuple[datetime, float]:
    """When the node's interface started (UTC) and how long it ran, from its result file."""
    runtime = node.result.runtime
    started = datetime.fromisoformat(runtime.startTime)
    return started if started.tzinfo else started.replace(tzinfo=UTC), float(runtime.duration)


def subject_steps(workflow, label: str) -> set[str]:
    """The steps nipype runs for one subject, named as in :class:`Progress`: every node but the
    ``IdentityInterface`` ones, which nipype removes from the graph it executes."""
    from nipype.interfaces.utility import IdentityInterface
    from nipype.pipeline.engine import JoinNode

    from bids_dl.execution import nodes_by_path

    subject_wf = workflow.get_node(f"single_subject_{label}_wf")
    return {
        ".".join(path.parts)
        for path, node in nodes_by_path(subject_wf)
        if isinstance(node, JoinNode) or not isinstance(node.interface, IdentityInterface)
    }


def summary(config: Config, labels: list[str], failed: list[str], unfinished: list[str]) -> str:
    """One line: how many subjects are done, failed or unfinished, and where the reports are."""
    done = len(labels) - len(failed) - len(unfinished)
    counts = [f"{done} subject(s) done", _count("failed", failed)]
    if unfinished:
        counts.append(_count("unfinished", unfinished))
    return f"{', '.join(counts)}; reports: {config.execution.output_dir}/sub-<label>.html"


def _count(state: str, labels: list[str]) -> str:
    named = f" ({', '.join(f'sub-{label}' for label in labels)})" if labels else ""
    return f"{len(labels)} {state}{named}"
