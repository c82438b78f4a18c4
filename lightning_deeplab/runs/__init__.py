"""A run on disk: the folder a fit claims, its checkpoints written whole (and what a checkpoint
tells a later command), the launch check, the experiment logger."""
