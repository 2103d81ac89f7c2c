"""The web adapter: a chat page, an OpenAI-compatible API, the admin dashboard and the
operations endpoints, all on one aiohttp port (``web.host:web.port``).

``create_app`` builds the application; ``run_web`` serves it until cancelled.
"""

from adapters.web.app import create_app, run_web

__all__ = ["create_app", "run_web"]
