import logging
import os
import sys

from agent.cli import main

code = main()
if sys.argv[1:2] in (["train"], ["eval"]):
    # The daemon's heavy children: everything they write is on disk (atomic, fsynced) when
    # main returns, and torch's interpreter teardown takes seconds on a small board, which
    # would stretch every stop on a constraint (issue 17: bounded in time) and every burst.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
sys.exit(code)
