"""Devices: the peripherals (Software 1.0 tools and MCP servers) the model reaches by syscall.

See `base.py` for the contract every device implements.
"""

from llmos.hw.dev.base import CallContext, Device, DeviceResult, truncate_text

__all__ = ["CallContext", "Device", "DeviceResult", "truncate_text"]
