"""The fault-injection suite: what happens to a stack when things go wrong during or between
applies (SIGKILLed applies, deleted kernel objects, damaged state files, a busy API), on both
runtimes.

Every case ends the same way: a re-apply converges (`pyapply -f` exits 0, then `pyapply diff
--exit-code` says 0), the data in a named volume is intact, and the `runtime` fixture finds
nothing left behind after the stack is removed. Shared helpers are in conftest.py. Run the
suite alone with `pytest tests/e2e/faults`.
"""
