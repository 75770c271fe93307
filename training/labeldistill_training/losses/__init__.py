"""Losses: CenterPoint detection, BEVDepth depth, and the four distillation methods."""
