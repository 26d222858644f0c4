"""How many torch CPU threads a speech-to-speech turn uses by default (`opens2s chat`, `opens2s space`)."""

import os


__all__ = ["default_num_threads"]


def default_num_threads() -> int:
    """Half the cores this process may run on, at least 1 and at most 4: 1 on a 2-core machine.

    A streaming turn runs small matrix products one token at a time, so OpenMP synchronisation costs more than a
    second thread gains, and with every core taken a core busy with other work stalls each step. Measured with
    `opens2s chat` (tiny model) on a 2-core CPU shared with other jobs, real-time factor on 1 thread: 0.15-0.21
    (lightly loaded), 0.23-0.99 (other test suites running); on torch's default of 2 threads: 0.14-1.75 and 9.2-13.0.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, max(1, cores // 2))
