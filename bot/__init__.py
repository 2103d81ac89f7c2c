"""Parley's core: settings, wire contract, queue, commands, runtime and CLI.

Imports neither torch nor any platform SDK (a test keeps it so).
"""
