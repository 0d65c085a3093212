"""The ``sosimple-proxy`` twistd plugin: options only; the work is in
:mod:`sosimple_proxy.service`."""

from zope.interface import implementer

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage


class Options(usage.Options):
    optParameters = [
        ["config", "c", "conf/site.ini", "Path to site.ini."],
    ]


@implementer(IServiceMaker, IPlugin)
class SosimpleServiceMaker:
    tapname = "sosimple-proxy"
    description = "SOSIMPLE peer-to-peer SIP proxy and registrar."
    options = Options

    def makeService(self, options):
        # Imported late so that `twistd --help` stays cheap and a broken
        # config never shows up as a plugin import error.
        from sosimple_proxy.service import makeService

        return makeService(options["config"])


serviceMaker = SosimpleServiceMaker()
