"""Scipion protocols of scipion-em-tomodrgn (import, train, analyze, generate volumes); none yet."""
