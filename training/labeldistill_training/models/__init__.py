"""Training-only networks: the LiDAR teacher, the LabelDistill label encoder and the distillation adaptors."""
