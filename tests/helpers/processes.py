"""The processes of a local job, found by its job file on their command lines (for checks that a job
leaves nothing running)."""

from pathlib import Path


def processes_of(job_file: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(job_file).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids
