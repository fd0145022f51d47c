"""newsletter: compile new items into one digest and deliver it to every member."""

__version__ = "0.1.0"
