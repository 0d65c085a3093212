"""Helpers for tests of sosimple-proxy, ours and our users'.

As ``treq.testing`` does for treq, this package holds what a test needs to
drive the proxy, one concern a module:

- ``ports``: loopback ports below the kernel's ephemeral range, one block
  per test process, so a chosen port is not taken before it is bound;
- ``polling``: :func:`wait_until` (blocking) and :func:`until` (a Deferred)
  in place of fixed sleeps;
- ``sip_requests``: REGISTER/MESSAGE/OPTIONS as text, and one exchange
  over UDP;
- ``proxy``: :class:`ProxyProcess` and :class:`PeerProcess`, the proxy and a
  storage peer under ``twistd`` on free ports;
- ``sipp`` and ``baresip``: the real peers, with the options that make them
  behave on loopback (``shared/peers.md``); ``sipp_scenarios``: SIPp
  scenarios built from steps;
- ``ua``: :class:`AnsweringUA`, a UDP UA that answers 200 and keeps requests;
  ``tls_ua``: :class:`TLSAnsweringUA`, the same over TLS with a certificate
  the test chose (for outbound TLS checks);
- ``linphone``: :class:`Linphonec`, liblinphone's command-line softphone;
  ``stunnel``: :class:`Stunnel`, TLS in front of a TCP-only peer (sipp);
- ``transaction``: a recording wire and transaction user around a real
  ``TransactionLayer`` on a ``task.Clock``;
- ``ring``: a settled simulated Chord ring, and a check that real nodes settled.

The process helpers are blocking and need no reactor, so they work from
plain pytest tests and from trial tests alike.  Each helper that chooses its
own ports retries on fresh ones when it loses a race for them.
"""

from sosimple_proxy.testing.baresip import BARESIP, BARESIP_MODULE_PATH, Baresip, BaresipError, SipTraceEntry, baresip_port
from sosimple_proxy.testing.polling import WaitTimeout, until, wait_until
from sosimple_proxy.testing.ports import bound_by, free_port, free_ports, port_is_free
from sosimple_proxy.testing.proxy import REPO_ROOT, PeerProcess, ProxyProcess, ProxyStartError
from sosimple_proxy.testing.ring import ring_settled, run_until_answered, sim_ring
from sosimple_proxy.testing.sip_requests import (
    hostport,
    message_request,
    options_request,
    register_contact,
    register_request,
    send_message,
    sip_options_ping,
    sip_request,
    status_line,
    udp_exchange,
    udp_final_response,
)
from sosimple_proxy.testing.sipp import (
    SIPP,
    SIPP_BIND_FAILED,
    SIPP_BUILTIN_SCENARIOS,
    SIPP_OPTIONS_SCENARIO,
    SIPP_OPTIONS_SCENARIO_TEMPLATE,
    SippProcess,
    SippResult,
    assert_sipp_ok,
    run_sipp,
    sipp_command,
    start_sipp,
)
from sosimple_proxy.testing.transaction import RecordingTU, RecordingWire, make_layer
from sosimple_proxy.testing.linphone import LINPHONEC, Linphonec, LinphonecError
from sosimple_proxy.testing.stunnel import STUNNEL, Stunnel, StunnelError
from sosimple_proxy.testing.tls_ua import TLSAnsweringUA
from sosimple_proxy.testing.ua import AnsweringUA

__all__ = [
    "AnsweringUA",
    "LINPHONEC",
    "Linphonec",
    "LinphonecError",
    "STUNNEL",
    "Stunnel",
    "StunnelError",
    "TLSAnsweringUA",
    "BARESIP",
    "BARESIP_MODULE_PATH",
    "Baresip",
    "BaresipError",
    "PeerProcess",
    "ProxyProcess",
    "ProxyStartError",
    "REPO_ROOT",
    "RecordingTU",
    "RecordingWire",
    "SIPP",
    "SIPP_BIND_FAILED",
    "SIPP_BUILTIN_SCENARIOS",
    "SIPP_OPTIONS_SCENARIO",
    "SIPP_OPTIONS_SCENARIO_TEMPLATE",
    "SipTraceEntry",
    "SippProcess",
    "SippResult",
    "WaitTimeout",
    "assert_sipp_ok",
    "baresip_port",
    "bound_by",
    "free_port",
    "free_ports",
    "hostport",
    "make_layer",
    "message_request",
    "options_request",
    "port_is_free",
    "register_contact",
    "register_request",
    "ring_settled",
    "run_sipp",
    "run_until_answered",
    "send_message",
    "sim_ring",
    "sip_options_ping",
    "sip_request",
    "sipp_command",
    "start_sipp",
    "status_line",
    "udp_exchange",
    "udp_final_response",
    "until",
    "wait_until",
]
