"""Local stand-ins for what surrounds the agent, shared by ``python -m agent demo`` and the
tests: a free port (``ports``), an MQTT broker (``brokers``), the backend's MQTT side
(``backend``), an HTTP callback receiver (``callback_receiver``), synthetic classroom
video from face photos (``classroom``) and an RTSP camera serving it (``rtsp``, GStreamer's
RTSP server under Debian's Python: ``rtsp_server_main``).

Nothing here is used by the agent itself; it ships in the package because the demo does.
"""
