"""The export outbox: results waiting for delivery, and the dead-letter folder.

``<spool>/outbox/<result_id>.json`` exists from the first export attempt until every
destination answered success; each failed attempt is recorded in it (count, last error, time).
When a result has waited longer than the configured limit it moves to
``<spool>/dead-letter/<result_id>.json`` and is no longer retried automatically;
``picard-node outbox retry`` puts it back. All writes are atomic and fsynced.

Each pending entry records the id of the export job that is working on it (``job_id``): the
job's retries keep that id, so ``outbox retry`` can tell a result that already has a job
queued (and leave it alone) from one that has none (dead-lettered, or lost with a killed
embedded worker).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from dicom_node.spool import atomic_write_bytes

logger = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
DEAD_LETTER_DIR = "dead-letter"


class OutboxState(StrEnum):
    """Where an undelivered result waits."""

    PENDING = "pending"  # retried automatically with backoff
    DEAD_LETTER = "dead-letter"  # gave up; ``picard-node outbox retry`` revives it


@dataclass
class OutboxEntry:
    """Delivery state of one result.

    Attributes
    ----------
    result_id : str
        Result folder name (digest of source UIDs and model version).
    result_dir : str
        Folder holding ``objects/`` and ``delivered/``.
    first_attempt : float
        Unix time of the first export attempt.
    attempts : int
        Failed attempts so far.
    last_error : str
        Message of the last failure ("" before any).
    last_attempt : float
        Unix time of the last failure (0 before any).
    state : OutboxState
        ``pending`` or ``dead-letter``.
    job_id : str or None
        The export job queued for it (``None``: none known, e.g. dead-lettered).
    """

    result_id: str
    result_dir: str
    first_attempt: float = field(default_factory=time.time)
    attempts: int = 0
    last_error: str = ""
    last_attempt: float = 0.0
    state: OutboxState = OutboxState.PENDING
    job_id: str | None = None

    @property
    def queued(self) -> bool:
        """A pending entry with an export job queued for it."""
        return self.state is OutboxState.PENDING and bool(self.job_id)

    def __post_init__(self) -> None:
        self.state = OutboxState(self.state)


class Outbox:
    """Outbox and dead-letter folders of a spool."""

    def __init__(self, spool_dir: Path | str) -> None:
        self.pending_dir = Path(spool_dir) / OUTBOX_DIR
        self.dead_dir = Path(spool_dir) / DEAD_LETTER_DIR
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        self.dead_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, result_id: str, dead: bool = False) -> Path:
        return (self.dead_dir if dead else self.pending_dir) / f"{result_id}.json"

    def _write(self, entry: OutboxEntry) -> None:
        atomic_write_bytes(self._path(entry.result_id, entry.state is OutboxState.DEAD_LETTER),
                           json.dumps(asdict(entry), indent=1).encode())

    def get(self, result_id: str) -> OutboxEntry | None:
        """The entry for ``result_id`` (pending or dead-lettered), or None."""
        for dead in (False, True):
            path = self._path(result_id, dead)
            if path.exists():
                return OutboxEntry(**json.loads(path.read_text()))
        return None

    def open(self, result_id: str, result_dir: Path | str,
             job_id: str | None = None) -> OutboxEntry:
        """Record that delivery of a result starts (idempotent: keeps an existing entry).

        A pending entry takes `job_id` (the export job now working on it) when given.
        """
        entry = self.get(result_id)
        if entry is None:
            entry = OutboxEntry(result_id=result_id, result_dir=str(result_dir), job_id=job_id)
            self._write(entry)
        elif job_id and entry.state is OutboxState.PENDING and entry.job_id != job_id:
            entry.job_id = job_id
            self._write(entry)
        return entry

    def queued(self, result_id: str, job_id: str) -> OutboxEntry:
        """Record that export job `job_id` was queued for a pending result."""
        entry = self.get(result_id)
        if entry is None:
            raise KeyError(f"result {result_id!r} is not in the outbox")
        entry.job_id = job_id
        self._write(entry)
        return entry

    def job_ended(self, result_id: str) -> None:
        """Forget the job of a pending entry whose export job ended without delivering (so
        ``outbox retry`` queues a new one); no-op if the result is not pending."""
        entry = self.get(result_id)
        if entry is not None and entry.state is OutboxState.PENDING and entry.job_id:
            entry.job_id = None
            self._write(entry)

    def record_failure(self, result_id: str, error: str) -> OutboxEntry:
        """Count a failed attempt; returns the updated entry."""
        entry = self.get(result_id)
        if entry is None:
            raise KeyError(f"result {result_id!r} is not in the outbox")
        entry.attempts += 1
        entry.last_error = error[:2000]
        entry.last_attempt = time.time()
        self._write(entry)
        return entry

    def delivered(self, result_id: str) -> None:
        """Remove a result that reached every destination."""
        for dead in (False, True):
            self._path(result_id, dead).unlink(missing_ok=True)

    def dead_letter(self, result_id: str) -> OutboxEntry:
        """Move a result to the dead-letter folder (no more automatic retries)."""
        entry = self.get(result_id)
        if entry is None:
            raise KeyError(f"result {result_id!r} is not in the outbox")
        entry.state = OutboxState.DEAD_LETTER
        entry.job_id = None
        self._write(entry)
        self._path(result_id).unlink(missing_ok=True)
        logger.error("result %s moved to the dead-letter folder after %d attempts: %s",
                     result_id, entry.attempts, entry.last_error)
        return entry

    def revive(self, result_id: str) -> OutboxEntry:
        """Put a dead-lettered result back in the outbox with a fresh clock."""
        entry = self.get(result_id)
        if entry is None:
            raise KeyError(f"result {result_id!r} is neither in the outbox nor dead-lettered")
        entry.state = OutboxState.PENDING
        entry.first_attempt = time.time()
        entry.job_id = None
        self._write(entry)
        self._path(result_id, dead=True).unlink(missing_ok=True)
        return entry

    def entries(self) -> list[OutboxEntry]:
        """All pending and dead-lettered entries, oldest first."""
        found = [OutboxEntry(**json.loads(p.read_text()))
                 for folder in (self.pending_dir, self.dead_dir) for p in folder.glob("*.json")]
        return sorted(found, key=lambda e: e.first_attempt)
