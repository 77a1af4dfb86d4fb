"""plprobe: a connection-testing agent for AWS PrivateLink."""

__version__ = "0.1.0"
