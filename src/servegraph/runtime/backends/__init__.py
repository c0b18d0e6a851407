"""Model backends. A backend is one module with a ``load()`` function; see ``base``."""
