"""The cross-encoder's life: protocol, in-process and remote scorers, evaluation."""
