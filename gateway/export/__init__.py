"""FHIR Bulk Data export (Bulk Data Access IG 2.0): jobs that write NDJSON files off the request thread.

    jobs = ExportJobs(store, engine, "var/exports")
    job_id = jobs.kick_off(ExportRequest("system", url, types, since, filters))
    jobs.get(job_id)            # ExportJob: status, progress, output (type, file, count)
    jobs.cancel(job_id)         # stops the thread, removes the files; the job is gone

The HTTP side (kick-off, status polling, file download, DELETE) is ``gateway.fhir_api.bulk``.
"""
from gateway.export.jobs import ExportJob, ExportJobs, ExportOutput, ExportRequest

__all__ = ["ExportJob", "ExportJobs", "ExportOutput", "ExportRequest"]
