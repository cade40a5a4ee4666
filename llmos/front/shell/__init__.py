"""`llmos shell`: an interactive terminal to the OS.

`command` (the click command), `parse` (the line grammar), `jobs` (the job table: pipelines of
processes), `conversation` (the default program's conversation), `backend` (the kernel in this
process, or a remote `llmos serve`), `show` (ps, top and jobs as text), `repl` (the loop).
"""
