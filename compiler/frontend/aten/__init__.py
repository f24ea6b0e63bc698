"""Capture handlers, one module per family of aten ops (table.py gathers them)."""
