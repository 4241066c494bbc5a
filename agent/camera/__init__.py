"""Reading a camera: the reader thread, the video sources (PyAV, OpenCV), the frame cap,
the last view.
"""
