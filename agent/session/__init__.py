"""Running sessions: the manager, the per-camera analysis, the shared scheduler, attendance
and presence.
"""
