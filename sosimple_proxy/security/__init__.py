"""Security: the lowest layer.  It imports nothing else of sosimple_proxy.

Pure where it can be: time comes from an injected ``IReactorTime``, and the
only I/O is reading and writing the files it owns.

- ``authparams``: the auth-param list parser and formatter (RFC 3261 25.1).
- ``algorithms``: MD5 / SHA-256 (and -sess) by their RFC 8760 names; HA1,
  response.
- ``users``: the users file (``user:realm:md5-ha1:sha256-ha1``): parse,
  look up, reload safely, edit atomically with mode 0600.
- ``nonces``: self-validating HMAC nonces, the shared secret file,
  nonce-count replay tracking.
- ``digest``: challenges and verification; ``DigestAuthenticator`` is what
  the proxy holds.
"""
