"""The one compiled module: the parser's fast paths (issue 12).

Everything else is in setup.cfg.  ``optional=True``: where the C compiler
or the Python headers are missing the build goes on without it and the
parser runs its pure-Python code (sosimple_proxy/sip/accel.py chooses).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sosimple_proxy.sip._cparse",
            ["sosimple_proxy/sip/_cparse.c"],
            optional=True,
        )
    ]
)
