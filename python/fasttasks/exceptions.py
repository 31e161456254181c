"""Exceptions that fasttasks itself records as a task's error.

A task's ``errors`` hold the dotted path of the exception's class; Django's
``TaskError.exception_class`` imports it, so every path the worker writes must name a class that exists.
"""

from __future__ import annotations

__all__ = ["WorkerCrashed", "WorkerError"]


class WorkerError(Exception):
    """The worker lost an attempt without an outcome from the task (an executor failure)."""


class WorkerCrashed(WorkerError):
    """The worker process running the attempt died (stopped sending heartbeats); it was rescued."""
