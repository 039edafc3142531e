"""The inference service shipped into every stage (FastAPI + a pluggable inference backend).

Run it with ``python -m service``; configuration is read from environment variables
(``service.settings``), documented in ``service/README.md``.
"""

__version__ = "0.1.0"
