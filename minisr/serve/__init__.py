"""The upscaling service: ``python -m minisr.serve [--host 127.0.0.1 --port 8000 --models ...]``.

FastAPI + uvicorn (the ``serve`` extra), imported only by this subpackage. :func:`create_app` in ``app.py`` builds the
application; ``__main__.py`` is the command line; ``static/`` holds the web page served at ``/``.
"""
