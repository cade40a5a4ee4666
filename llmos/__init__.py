"""llmos: an operating system for the LLM computer.

The model is the CPU, its context window is RAM, classical software reached through syscalls
is the set of peripherals, and programs are written in English. See docs/ARCHITECTURE.md for
the reading order of the modules.
"""

__version__ = "0.1.0"
