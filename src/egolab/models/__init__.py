"""Model architectures, their training targets and losses, and their output decoders."""
