"""The models and what they compute: packs, ONNX sessions, the engine, detection coverage,
tracking, matching.
"""
