"""``governor console``: the operations console, a read-only web app over the query layer.

Every figure on a page comes from the functions ``governor ask --json`` and ``governor incident
timeline --json`` print (:mod:`streams.console.source`); each page has a JSON twin under
``/api/`` that returns those answers unchanged. Pages are rendered on the server
(:mod:`streams.console.views`, Jinja2 with autoescaping); the stylesheet and the little script
are shipped in ``static/`` (no CDN). No PII value is ever rendered: the timeline holds none.
"""
