"""Typed settings from the environment (prefix WAFLEET_) and the Celery configuration.

Read only by entry points: the CLI, worker and gateway start-up, Alembic's env, tests. Every
other package takes plain values. A missing or invalid setting stops start-up with one line
naming the variable and what is wrong (config.settings.load_settings).

Must not import: first-party code, except the queue and task names in tasks.queues (the
public naming contract, needed by the Celery configuration).
"""
