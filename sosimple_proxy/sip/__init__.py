"""The SIP protocol layer: messages, URIs, parser, transports, transactions."""
