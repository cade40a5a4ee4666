"""Devices: the peripherals (Software 1.0 tools and MCP servers) the model reaches by syscall.

See `base.py` for the contract every device implements.
"""
