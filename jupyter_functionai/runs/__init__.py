"""Papermill runs of notebooks in sandbox sessions, as durable tasks."""
