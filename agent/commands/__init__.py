"""The command plane: the processor (key, parse, replay, validation, readiness) and one
handler per command.
"""
