"""``conntrace report``: read conntrace's own events back from a deployment's logs and tell the story.

One job per module, bottom of the stack first: ``reading`` (log files to events,
knowing nothing of what is made of them), ``model`` (processes, fork trees,
connection lives and problems, folded event by event), ``advice`` (the culprit
line and what to do, per kind), ``findings`` (the model as plain data: what
``--json`` prints and the other outputs render), ``text`` and ``html`` (the
outputs), ``cli`` (the command line).
"""
