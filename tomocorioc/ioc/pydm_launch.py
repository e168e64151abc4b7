"""Open the MEDM screens in PyDM where MEDM is not installed: ``python -m tomocorioc.ioc.pydm_launch``.

pydm converts ``.adl`` files with adl2pydm, and two gaps between them need
bridging (found rendering our screens; the render test does the same):

* adl2pydm 0.0.4 wraps every screen in ``PyDMAbsoluteGeometry``, a container
  proposed in slaclab/pydm#865 that pydm 1.29 does not ship; a plain QWidget
  with absolutely placed children is exactly that;
* MEDM's dynamic-attribute calcs see an enum's index, pydm rules its string
  unless ``use_enum`` is off, so the status colours would never match.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from typing import Any, Dict, List, Optional


def install_shims() -> None:
    """Register the missing ``pydm.widgets.absolute_geometry`` module and mend pydm's pyepics connection
    race (call before loading a screen)."""
    from qtpy.QtWidgets import QWidget
    if "pydm.widgets.absolute_geometry" not in sys.modules:
        shim = types.ModuleType("pydm.widgets.absolute_geometry")
        shim.PyDMAbsoluteGeometry = type("PyDMAbsoluteGeometry", (QWidget,), {})  # type: ignore[attr-defined]
        sys.modules["pydm.widgets.absolute_geometry"] = shim
    _mend_connection_race()


def _mend_connection_race() -> None:
    """A widget shown disconnected for good while its channel is connected.

    pydm's pyepics ``Connection.add_listener`` (on a thread pool) checks
    ``isConnected``, then sends that state to every listener; when the CA
    connection callback (``conn=True``) falls between the check and the send,
    the stale ``False`` is sent last and nothing sends ``True`` again (seen on
    a loaded host: 4 of ~120 channels of a screen).  Sending the state again
    when it changed meanwhile closes the window.
    """
    try:
        import epics
        from pydm.data_plugins.epics_plugins import pyepics_plugin_component as component
    except ImportError:   # another pydm EPICS plugin, or none
        return
    conn_cls = component.Connection
    if getattr(conn_cls, "_tomocorioc_mended", False):
        return
    original = conn_cls.add_listener

    def add_listener(self: Any, channel: Any) -> None:
        original(self, channel)
        pv = getattr(self, "pv", None)
        if pv is not None and epics.ca.isConnected(pv.chid) and not self.connected:
            self.send_connection_state(conn=True)

    conn_cls.add_listener = add_listener
    conn_cls._tomocorioc_mended = True


def medm_rules(display: Any) -> None:
    """Make every rule of a loaded display evaluate enum channels by index, as MEDM does."""
    from qtpy.QtWidgets import QWidget
    for w in display.findChildren(QWidget):
        if getattr(w, "rules", None):
            rules = json.loads(w.rules)
            for rule in rules:
                for ch in rule.get("channels", []):
                    ch["use_enum"] = False
            w.rules = json.dumps(rules)


def _patch_loader() -> None:
    """Post-process every display pydm loads (main window, related displays)."""
    import pydm.display as display_mod
    import pydm.main_window as main_mod
    original = display_mod.load_file

    def load_file(*args: Any, **kwargs: Any) -> Any:
        shown = original(*args, **kwargs)
        if shown is not None and hasattr(shown, "findChildren"):
            medm_rules(shown)
        return shown
    display_mod.load_file = load_file
    main_mod.load_file = load_file


def main(argv: Optional[List[str]] = None) -> int:
    """``pydm_launch SCREEN.adl [P=TomoCor:]...``: open a screen with macros."""
    ap = argparse.ArgumentParser(prog="python -m tomocorioc.ioc.pydm_launch", description=__doc__.splitlines()[0])
    ap.add_argument("screen", help=".adl (or .ui) file")
    ap.add_argument("macros", nargs="*", metavar="NAME=VALUE", help="macros, e.g. P=TomoCor:")
    args = ap.parse_args(argv)
    macros: Dict[str, str] = {}
    for m in args.macros:
        name, sep, value = m.partition("=")
        if not sep or not name:
            ap.error(f"macro must be NAME=VALUE, got {m!r}")
        macros[name] = value
    install_shims()
    _patch_loader()
    from pydm import PyDMApplication
    app = PyDMApplication(ui_file=args.screen, macros=macros, hide_nav_bar=True)
    return int(app.exec_())


if __name__ == "__main__":
    sys.exit(main())
