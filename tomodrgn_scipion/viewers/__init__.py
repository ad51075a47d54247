"""Scipion viewers of scipion-em-tomodrgn (latent-space plots, volume series); none yet."""
