"""Click commands, one module per group of the workflow. Heavy imports (torch) stay inside
command bodies, so device-side commands (``run``, ``bench``) start without torch."""
