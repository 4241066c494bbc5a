"""What the backend is told and what is kept: events, the durable outbox, delivery, the
SQLite state file.
"""
