"""WSGI entry point for production servers: ``gunicorn wsgi:app`` or ``waitress-serve wsgi:app``.
Configuration comes from GATEWAY_* environment variables (see README)."""
from gateway import create_app

app = create_app()
