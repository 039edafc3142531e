"""Guardrails (``guardrails.py``) and the pulumi-policy pack that enforces them (``__main__.py``)."""
