"""Re-training tweaks, one file each; each acts on a built model or on the training step."""
