"""sosimple-proxy: a peer-to-peer SIP proxy and registrar (SOSIMPLE) on Twisted."""

__version__ = "0.1.0"
