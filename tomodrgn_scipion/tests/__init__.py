"""Tests of scipion-em-tomodrgn (plugin skeleton here, scientific code under tests/method/)."""
