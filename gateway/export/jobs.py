"""Export jobs: one background thread each, state in the ``export_jobs`` table, NDJSON under a folder.

A job streams: the store yields one page of stored JSON at a time (``ResourceStore.iter_current``)
and each resource is written as one line, so memory stays flat whatever the export's size. The
table is the truth, shared by every process of a deployment: a job is run by the process that
owns it (``owner``), which renews its lease every few seconds while it lives. A job whose lease ran
out (its process was killed, or the machine went away) is taken over by the next process that looks
(``resume_unfinished``, at every export request: kick-off, status poll, download) and started again from
the beginning (partial files discarded); a job whose owner still works is never touched. Finished
jobs keep answering their status with the files still on disk.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Engine

from gateway.store import ResourceStore, SearchCriterion, now_instant
from gateway.store import schema

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
FINISHED = ("completed", "failed")
UNFINISHED = ("accepted", "in-progress")
LEASE_SECONDS = 30.0          # a job's owner renews it every third of this


@dataclass
class ExportRequest:
    """What a client asked for; ``type_filters`` maps a type to ORed criteria lists (``_typeFilter``)."""
    kind: str                                  # system | patient
    request_url: str
    types: list[str]
    since: str | None = None
    type_filters: dict[str, list[list[SearchCriterion]]] = field(default_factory=dict)
    owner: str | None = None                   # the client that kicked it off (None without security)

    def to_json(self) -> bytes:
        return orjson.dumps({"kind": self.kind, "types": self.types, "since": self.since, "owner": self.owner,
                             "type_filters": {t: [[dataclasses.asdict(c) for c in criteria] for criteria in sets]
                                              for t, sets in self.type_filters.items()}})

    @classmethod
    def from_json(cls, request_url: str, data: bytes) -> "ExportRequest":
        raw = orjson.loads(data)
        filters = {t: [[_criterion(c) for c in criteria] for criteria in sets]
                   for t, sets in raw["type_filters"].items()}
        return cls(raw["kind"], request_url, raw["types"], raw["since"], filters, raw.get("owner"))


def _criterion(data: dict) -> SearchCriterion:
    """A criterion back from its JSON form (chains nest)."""
    chain = data.get("chain")
    return SearchCriterion(**{**data, "chain": _criterion(chain) if chain else None}) if "chain" in data \
        else SearchCriterion(**data)


@dataclass
class ExportOutput:
    type: str
    file: str
    count: int


@dataclass
class ExportJob:
    id: str
    status: str                       # accepted | in-progress | completed | failed | cancelled
    request: ExportRequest
    transaction_time: str
    progress: str
    output: list[ExportOutput]
    error: str | None


class ExportJobs:
    """Starts, tracks, cancels and resumes export jobs; thread-safe."""

    def __init__(self, store: ResourceStore, engine: Engine, export_dir: str | Path,
                 lease_seconds: float = LEASE_SECONDS):
        self.store = store
        self.engine = engine
        self.export_dir = Path(export_dir)
        self.lease_seconds = lease_seconds
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"      # this process's instance
        self._threads: dict[str, threading.Thread] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._renewing: threading.Thread | None = None

    # ------------------------------------------------------------------ API

    def kick_off(self, request: ExportRequest) -> str:
        job_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(insert(schema.export_jobs).values(
                id=job_id, status="accepted", kind=request.kind, request_url=request.request_url,
                params=request.to_json(), transaction_time=now_instant(), created_at=time.time(),
                progress="accepted", output=b"[]", owner=self.owner,
                lease_until=time.time() + self.lease_seconds))
        self._start(job_id)
        return job_id

    def get(self, job_id: str) -> ExportJob | None:
        """The job, None when it is unknown or was cancelled."""
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.export_jobs).where(schema.export_jobs.c.id == job_id)).first()
        if row is None or row.status == "cancelled":
            return None
        return ExportJob(row.id, row.status, ExportRequest.from_json(row.request_url, row.params),
                         row.transaction_time, row.progress or "",
                         [ExportOutput(**o) for o in orjson.loads(row.output or b"[]")], row.error)

    def cancel(self, job_id: str) -> bool:
        """Stop the job and delete its files; False when there is no such (live) job."""
        with self.engine.begin() as conn:
            changed = conn.execute(update(schema.export_jobs).where(
                schema.export_jobs.c.id == job_id, schema.export_jobs.c.status != "cancelled").values(
                status="cancelled", progress="cancelled", finished_at=time.time())).rowcount
        if not changed:
            return False
        with self._lock:
            self._cancelled.add(job_id)
            thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout=30)
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return True

    def file_path(self, job: ExportJob, name: str) -> Path | None:
        """The path of one output file of a completed job, None if it is not one."""
        if job.status != "completed" or name not in {o.file for o in job.output}:
            return None
        return self.job_dir(job.id) / name

    def job_dir(self, job_id: str) -> Path:
        return self.export_dir / job_id

    def resume_unfinished(self) -> list[str]:
        """Take over and start again every unfinished job whose owner's lease ran out (a process
        that died); returns their ids. Called at every export request."""
        jobs = schema.export_jobs.c
        now = time.time()
        with self.engine.connect() as conn:
            ids = [r.id for r in conn.execute(select(jobs.id).where(
                jobs.status.in_(UNFINISHED), or_(jobs.lease_until.is_(None), jobs.lease_until < now)))]
        taken = []
        for job_id in ids:
            with self.engine.begin() as conn:       # one process wins each job: a conditional UPDATE
                won = conn.execute(update(schema.export_jobs).where(
                    jobs.id == job_id, jobs.status.in_(UNFINISHED),
                    or_(jobs.lease_until.is_(None), jobs.lease_until < now)).values(
                    owner=self.owner, lease_until=time.time() + self.lease_seconds)).rowcount
            if won:
                log.warning("export job %s: its process stopped renewing it; started again here", job_id)
                taken.append(job_id)
                self._start(job_id)
        return taken

    def _renew_loop(self) -> None:
        """Renew the leases of this process's running jobs every third of a lease; it ends when none
        runs, and starts again with the next. (Orphaned jobs are taken over at export requests.)"""
        jobs = schema.export_jobs.c
        while True:
            time.sleep(self.lease_seconds / 3)
            with self._lock:            # a job is in _threads from before its thread starts until it ends
                running = list(self._threads)
                if not running:
                    self._renewing = None
                    return
            try:
                with self.engine.begin() as conn:
                    conn.execute(update(schema.export_jobs).where(
                        jobs.id.in_(running), jobs.owner == self.owner, jobs.status.in_(UNFINISHED)).values(
                        lease_until=time.time() + self.lease_seconds))
            except Exception:  # the database away for a moment: the next round tries again
                log.exception("export jobs: renewing leases failed")

    def wait(self, job_id: str, timeout: float = 60) -> None:
        """Block until the job's thread ends (for the CLI and tests)."""
        with self._lock:
            thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ the work

    def _start(self, job_id: str) -> None:
        thread = threading.Thread(target=self._run, args=(job_id,), name=f"export-{job_id[:8]}", daemon=True)
        with self._lock:
            self._threads[job_id] = thread
            if self._renewing is None:
                self._renewing = threading.Thread(target=self._renew_loop, name="export-leases", daemon=True)
                self._renewing.start()
        thread.start()

    def _run(self, job_id: str) -> None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(schema.export_jobs).where(schema.export_jobs.c.id == job_id)).first()
            if row is None or row.status not in UNFINISHED or row.owner != self.owner:
                return
            request = ExportRequest.from_json(row.request_url, row.params)
            folder = self.job_dir(job_id)
            shutil.rmtree(folder, ignore_errors=True)      # a resumed job starts over
            folder.mkdir(parents=True, exist_ok=True)
            outputs: list[ExportOutput] = []
            for n, resource_type in enumerate(request.types, start=1):
                if not self._set(job_id, progress=f"exporting {resource_type} ({n} of {len(request.types)} types)",
                                 status="in-progress"):
                    return
                output = self._export_type(job_id, request, resource_type, folder)
                if output is None:
                    return
                if output.count:
                    outputs.append(output)
                else:
                    (folder / output.file).unlink(missing_ok=True)
            self._set(job_id, status="completed", progress="completed", finished_at=time.time(),
                      output=orjson.dumps([dataclasses.asdict(o) for o in outputs]))
        except Exception as exc:  # a job fails alone, with its reason; the server goes on
            log.exception("export job %s failed", job_id)
            self._set(job_id, status="failed", progress="failed", finished_at=time.time(),
                      error=f"the export failed inside the gateway: {type(exc).__name__}")
        finally:
            with self._lock:
                self._threads.pop(job_id, None)
                self._cancelled.discard(job_id)

    def _export_type(self, job_id: str, request: ExportRequest, resource_type: str,
                     folder: Path) -> ExportOutput | None:
        name = f"{resource_type}.ndjson"
        count = 0
        with open(folder / name, "wb") as out:
            resources = self.store.iter_current(resource_type, request.type_filters.get(resource_type),
                                                request.since, patient_compartment=request.kind == "patient",
                                                page_size=PAGE_SIZE)
            for content in resources:
                out.write(content)
                out.write(b"\n")
                count += 1
                if count % PAGE_SIZE == 0 and job_id in self._cancelled:
                    return None
        if job_id in self._cancelled:
            return None
        return ExportOutput(resource_type, name, count)

    def _set(self, job_id: str, **values) -> bool:
        """Update a running job this process owns; False when it was cancelled or taken over
        meanwhile (the thread then stops)."""
        with self.engine.begin() as conn:
            return bool(conn.execute(update(schema.export_jobs).where(
                schema.export_jobs.c.id == job_id, schema.export_jobs.c.owner == self.owner,
                schema.export_jobs.c.status.in_(UNFINISHED)).values(**values)).rowcount)
