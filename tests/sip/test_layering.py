"""The sip layer stands on its own (DESIGN.md, Layers): every
``sosimple_proxy.sip`` module imports with the layers above it made
unimportable, so no import of config, proxy, location, overlay, web or
service can hide anywhere in it, even in a module no test imports.  Each
module is imported first, on its own, so no import cycle depends on order."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import sosimple_proxy.sip

ABOVE = (
    "sosimple_proxy.config",
    "sosimple_proxy.service",
    "sosimple_proxy.proxy",
    "sosimple_proxy.location",
    "sosimple_proxy.overlay",
    "sosimple_proxy.web",
)


def sip_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(sosimple_proxy.sip.__path__, "sosimple_proxy.sip."))


def test_the_sip_package_has_the_modules_we_expect() -> None:
    # A guard for the test below: an empty list would pass it vacuously.
    assert {"sosimple_proxy.sip.address", "sosimple_proxy.sip.stack", "sosimple_proxy.sip.transaction"} <= set(sip_modules())


def test_every_sip_module_imports_without_the_layers_above() -> None:
    script = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {ABOVE!r}:
            sys.modules[name] = None  # "import name" now raises ImportError
        failed = []
        for module in {sip_modules()!r}:
            # Each from scratch, so that an import cycle that only works in
            # one order shows up too.
            for loaded in [n for n in sys.modules if n.startswith("sosimple_proxy.sip")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(module)
            except Exception as e:
                failed.append(f"{{module}}: {{type(e).__name__}}: {{e}}")
        leaked = sorted(n for n in sys.modules if n.startswith({ABOVE!r}) and sys.modules[n] is not None)
        print("\\n".join(failed + [f"imported {{n}}" for n in leaked]))
        sys.exit(1 if failed or leaked else 0)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
