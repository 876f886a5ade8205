"""Imported first by the forkserver that forks a node's product processes (supervisor.py), and
only there: it makes the forkserver ignore SIGTERM.

A SIGTERM to the node's process group (`kill -- -PGID`, systemd's control-group stop, the test
harness) reaches the forkserver too. Had it died, the supervisor would read each child's exit as
code 255 while the child was still draining, and stop without waiting for it. The forkserver
exits when the supervisor does instead (its end of a pipe closes); its children reset SIGTERM
before anything else (supervisor._child_entry).
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
