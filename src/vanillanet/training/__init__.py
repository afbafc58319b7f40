"""Training machinery: the config, state, run folder, runtime (processes, DDP, signals), deep training and plots."""
