"""``conntrace report``: read conntrace's own events back from a deployment's logs and tell the story.

One job per module, bottom of the stack first: ``reading`` (log files to events,
knowing nothing of what is made of them), ``times`` (times as written, read
when needed), ``advice`` (a problem's kind, culprit line and what to do),
``entities`` (a process, a life, a problem), ``model`` (the fold: events into
processes, fork trees, connection lives and problems), ``findings`` (the model as plain data: what
``--json`` prints and the other outputs render), ``text`` and ``html`` (the
outputs), ``cli`` (the command line).
"""
