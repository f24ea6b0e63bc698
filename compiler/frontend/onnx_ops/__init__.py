"""ONNX import handlers, one module per family of ONNX ops (table.py gathers them)."""
