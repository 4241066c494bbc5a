"""Edge face-recognition attendance agent."""

__version__ = "0.1.0"
