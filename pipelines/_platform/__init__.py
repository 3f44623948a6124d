"""What every command shares: the platform under ``beamml.pipelines``.

- ``cli``: parsing a command line, ``--config FILE`` run configs, Beam's own options.
- ``flags``: the shared flags (input, output, refused rows), their checks.
- ``runners``: runner choice, Dataflow checks, running in the run's own temporary folder.
- ``main``: the process around a command: logging, signals, exit codes, the records line.
- ``runs``, ``inputs``, ``overlap``, ``commit``: dated, committed runs (``_SUCCESS``,
  locks, the input a date names, what a destination may hold, the commit's moves).
- ``streaming``: streaming sources and sinks of every command (Pub/Sub, watched files).
- ``templates``: Flex Template metadata generated from the flags, and the launcher.
- ``faults``: named fault points the tests drive (``BEAMML_FAULT``); nothing when unset.
"""
