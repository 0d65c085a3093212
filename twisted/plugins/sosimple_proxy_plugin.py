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
    optFlags = [
        ["check", None, "Validate site.ini and the files it names, print ok or warnings, exit; binds nothing."],
    ]

    def postOptions(self) -> None:
        # Here, while twistd is still parsing its command line: before it
        # checks a pid file, starts logging or binds anything.
        if self["check"]:
            from sosimple_proxy.service import check_and_exit

            check_and_exit(self["config"])


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
