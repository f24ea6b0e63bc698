"""The mask concept: one user's kept output channels per layer (compiler/mask/layers.py)."""
