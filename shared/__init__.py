"""Shared by agent and hub: the message schema, topic names, configuration and errors.

Imports neither ``agent`` nor ``hub`` (a test checks it).
"""

__version__ = "0.1.0"
