"""Runs a job in this process and kills the process (``os._exit(KILLED)``, no clean-up of any kind)
the first time the denoise stage reaches a named step (:func:`dae.denoise.commits.step`):

    python tests/killpoint.py STEP denoise --input ... --output ...

Exits with KILLED at the step, or with the job's own status when the step was never reached.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KILLED = 77


def main() -> None:
    import importlib

    from dae.denoise import commits

    step, job, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    commits.STEP_HOOK = lambda name: os._exit(KILLED) if name == step else None
    mod = importlib.import_module(f"jobs.{job}")
    mod.main(mod.get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
