"""torchrun with a scheduler's exit statuses: ``python -m avmae.launch [torchrun options] script [args]``.

Takes exactly torchrun's arguments and runs torchrun (``torch.distributed.run``) in this process.
What differs is how it ends when the job is stopped:

- SIGTERM (or SIGINT, SIGHUP, SIGQUIT) to the launcher: torchrun's agent turns the signal into a
  ``SignalException``, forwards the signal to the workers (they save a checkpoint and stop, see
  ``tools/train.py``), waits up to ``--shutdown_timeout`` seconds (default 30) for them, then
  re-raises it; torchrun itself would end with a traceback and exit status 1, so a scheduler
  would see a failure. Here it ends with one line and ``128 + signal`` (143 for SIGTERM), the
  status of a pre-empted job, which is what ``accelerate launch`` does too.
- the workers alone got SIGTERM and every one of them exited with 143 (saved and stopped): 143,
  not torchrun's child-failure report.

Anything else (a worker that failed) is torchrun's own report and status. The workers die with
the launcher if it is killed outright (``avmae.train.loaders.die_with_launcher``).
"""

from __future__ import annotations

import signal
import sys
from typing import List, Optional

__all__ = ["main"]

TERMINATED = 128 + signal.SIGTERM


def main(argv: Optional[List[str]] = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
    from torch.distributed.run import parse_args, run

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        record(run)(args)  # as torchrun's own main: failures reported (and written to the error file)
    except SignalException as exc:  # the agent has stopped its workers already
        sig = signal.Signals(exc.sigval)
        print(
            f"avmae.launch: {sig.name} received; the workers were stopped (a run saves a checkpoint first: resume it"
            " with --resume)",
            file=sys.stderr,
        )
        return 128 + int(sig)
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        if codes == {TERMINATED}:
            print(
                f"avmae.launch: every worker stopped on SIGTERM (exit status {TERMINATED}); resume the run with"
                " --resume",
                file=sys.stderr,
            )
            return TERMINATED
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
