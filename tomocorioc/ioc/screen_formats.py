"""MEDM ``.adl`` and Phoebus ``.bob`` text for a :class:`~tomocorioc.ioc.screen_model.Screen` (pure, no EPICS)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, List, Sequence, Tuple

from tomocorioc.ioc.pvdefs import DEFAULT_PREFIX
from tomocorioc.ioc.screen_model import BG, BLACK, MACRO, MEDM_COLORS, Screen, Widget


# -- MEDM ADL -----------------------------------------------------------------------
def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AdlWriter:
    """MEDM display file text (format version 030111) for a :class:`Screen`."""

    ALIGN = {"left": "horiz. left", "center": "horiz. centered", "right": "horiz. right"}

    def __init__(self) -> None:
        self.lines: List[str] = []

    def block(self, name: str, body: Sequence[Any], depth: int = 0) -> None:
        """``name { ... }`` where body items are ``key=value`` strings or ``(name, body)`` sub-blocks."""
        tab = "\t" * depth
        self.lines.append(f"{tab}{_q(name) if ' ' in name else name} {{")
        for item in body:
            if isinstance(item, tuple):
                self.block(item[0], item[1], depth + 1)
            else:
                self.lines.append(f"{tab}\t{item}")
        self.lines.append(f"{tab}}}")

    @staticmethod
    def obj(w: Widget) -> Tuple[str, List[str]]:
        return ("object", [f"x={w.x}", f"y={w.y}", f"width={w.w}", f"height={w.h}"])

    def write(self, s: Screen) -> str:
        self.lines = []
        self.block("file", [f"name={_q(s.name + '.adl')}", "version=030111"])
        self.block("display", [("object", ["x=100", "y=100", f"width={s.width}", f"height={s.height}"]),
                               f"clr={BLACK}", f"bclr={BG}", 'cmap=""', "gridSpacing=5", "gridOn=0",
                               "snapToGrid=0"])
        self.block("color map", [f"ncolors={len(MEDM_COLORS)}", ("colors", [c + "," for c in MEDM_COLORS])])
        for w in s.widgets:
            getattr(self, "w_" + w.kind)(w)
        return "\n".join(self.lines) + "\n"

    def w_rect(self, w: Widget) -> None:
        basic = [f"clr={w.fg}"] + (['fill="outline"', "width=1"] if w.outline else [])
        self.block("rectangle", [self.obj(w), ("basic attribute", basic)])

    def w_colour(self, w: Widget) -> None:
        """One rectangle per condition, each visible while its calc is true (MEDM's colour-by-value idiom)."""
        for c in w.conds:
            dyn = ['vis="calc"', f"calc={_q(c.medm(bool(w.gate)))}", f"chan={_q(MACRO + w.pv)}"]
            if w.gate:
                dyn.append(f"chanB={_q(MACRO + w.gate)}")
            self.block("rectangle", [self.obj(w), ("basic attribute", [f"clr={c.color}"]), ("dynamic attribute", dyn)])

    def w_text(self, w: Widget) -> None:
        self.block("text", [self.obj(w), ("basic attribute", [f"clr={w.fg}"]), f"textix={_q(w.text)}",
                            f"align={_q(self.ALIGN[w.align])}"])

    @staticmethod
    def chan(w: Widget, block: str) -> Tuple[str, List[str]]:
        return (block, [f"chan={_q(MACRO + w.pv)}", f"clr={w.fg}", f"bclr={w.bg}"])

    def w_update(self, w: Widget) -> None:
        body = [self.obj(w), self.chan(w, "monitor")] + (['clrmod="alarm"'] if w.alarm else [])
        body += [f"align={_q(self.ALIGN[w.align])}"] + (['format="string"'] if w.string else []) + [("limits", [])]
        self.block("text update", body)

    def w_entry(self, w: Widget) -> None:
        body = [self.obj(w), self.chan(w, "control")] + (['clrmod="alarm"'] if w.alarm else [])
        body += (['format="string"'] if w.string else []) + [("limits", [])]
        self.block("text entry", body)

    def w_menu(self, w: Widget) -> None:
        self.block("menu", [self.obj(w), self.chan(w, "control")])

    def w_button(self, w: Widget) -> None:
        self.block("message button", [self.obj(w), self.chan(w, "control"), f"label={_q(w.text)}",
                                      f"press_msg={_q(w.value)}"])

    def w_related(self, w: Widget) -> None:
        target = [f"label={_q(w.text.rstrip('.'))}", f"name={_q(w.target + '.adl')}", f"args={_q('P=' + MACRO)}"]
        self.block("related display", [self.obj(w), ("display[0]", target), f"clr={w.fg}", f"bclr={w.bg}",
                                       f"label={_q('-' + w.text)}"])


# -- Phoebus BOB ----------------------------------------------------------------------
def _rgb(parent: ET.Element, tag: str, index: int) -> None:
    h = MEDM_COLORS[index]
    ET.SubElement(ET.SubElement(parent, tag), "color", red=str(int(h[0:2], 16)), green=str(int(h[2:4], 16)),
                  blue=str(int(h[4:6], 16)))


class BobWriter:
    """Phoebus display builder XML (display version 2.0.0) for a :class:`Screen`."""

    ALIGN = {"left": "0", "center": "1", "right": "2"}

    def write(self, s: Screen) -> str:
        root = ET.Element("display", version="2.0.0")
        self.sub(root, "name", s.name)
        macros = ET.SubElement(root, "macros")
        self.sub(macros, "P", DEFAULT_PREFIX)
        self.sub(root, "width", str(s.width))
        self.sub(root, "height", str(s.height))
        _rgb(root, "background_color", BG)
        for i, w in enumerate(s.widgets):
            getattr(self, "w_" + w.kind)(self.widget(root, w, i), w)
        ET.indent(root, space="  ")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    @staticmethod
    def sub(parent: ET.Element, tag: str, text: str) -> ET.Element:
        e = ET.SubElement(parent, tag)
        e.text = text
        return e

    _TYPES = {"rect": ("rectangle", "2.0.0"), "colour": ("rectangle", "2.0.0"), "text": ("label", "2.0.0"),
              "update": ("textupdate", "2.0.0"), "entry": ("textentry", "3.0.0"), "menu": ("combo", "2.0.0"),
              "button": ("action_button", "3.0.0"), "related": ("action_button", "3.0.0")}

    def widget(self, root: ET.Element, w: Widget, i: int) -> ET.Element:
        typ, version = self._TYPES[w.kind]
        e = ET.SubElement(root, "widget", type=typ, version=version)
        self.sub(e, "name", f"{typ}_{i}" + (f"_{w.pv}" if w.pv else ""))
        for tag, v in (("x", w.x), ("y", w.y), ("width", w.w), ("height", w.h)):
            self.sub(e, tag, str(v))
        if w.pv and w.kind != "colour":
            self.sub(e, "pv_name", MACRO + w.pv)
        return e

    def w_rect(self, e: ET.Element, w: Widget) -> None:
        self.sub(e, "line_width", "1" if w.outline else "0")
        _rgb(e, "line_color", w.fg)
        _rgb(e, "background_color", w.fg)
        if w.outline:
            self.sub(e, "transparent", "true")

    def w_colour(self, e: ET.Element, w: Widget) -> None:
        """One rectangle whose background follows a rule (display colour when no condition holds)."""
        self.sub(e, "line_width", "0")
        _rgb(e, "background_color", BG)
        rule = ET.SubElement(ET.SubElement(e, "rules"), "rule", name="colour", prop_id="background_color",
                             out_exp="false")
        for c in w.conds:
            exp = ET.SubElement(rule, "exp", bool_exp=c.phoebus(bool(w.gate)))
            _rgb(exp, "value", c.color)
        for pv in (w.pv, w.gate):
            if pv:
                self.sub(rule, "pv_name", MACRO + pv)

    def w_text(self, e: ET.Element, w: Widget) -> None:
        self.sub(e, "text", w.text)
        if w.big:
            ET.SubElement(ET.SubElement(e, "font"), "font", family="Liberation Sans", style="BOLD", size="18.0")
        _rgb(e, "foreground_color", w.fg)
        self.sub(e, "horizontal_alignment", self.ALIGN[w.align])
        self.sub(e, "vertical_alignment", "1")

    def _format(self, e: ET.Element, w: Widget) -> None:
        if w.string:
            self.sub(e, "format", "6")    # STRING: a char waveform as text

    def w_update(self, e: ET.Element, w: Widget) -> None:
        self._format(e, w)
        _rgb(e, "foreground_color", w.fg)
        _rgb(e, "background_color", w.bg)
        self.sub(e, "horizontal_alignment", self.ALIGN[w.align])
        self.sub(e, "vertical_alignment", "1")
        self.sub(e, "border_alarm_sensitive", "true" if w.alarm else "false")

    def w_entry(self, e: ET.Element, w: Widget) -> None:
        self._format(e, w)
        _rgb(e, "background_color", w.bg)
        if w.alarm:
            self.sub(e, "border_alarm_sensitive", "true")

    w_menu = w_entry    # a combo takes its states from the PV; only the colour is set

    def _action(self, e: ET.Element, w: Widget, typ: str, fields: Sequence[Tuple[str, str]]) -> None:
        self.sub(e, "text", w.text)
        action = ET.SubElement(ET.SubElement(e, "actions"), "action", type=typ)
        for tag, text in fields:
            self.sub(action, tag, text)
        self.sub(action, "description", w.text)
        _rgb(e, "background_color", w.bg)
        _rgb(e, "foreground_color", w.fg)

    def w_button(self, e: ET.Element, w: Widget) -> None:
        self._action(e, w, "write_pv", (("pv_name", MACRO + w.pv), ("value", w.value)))

    def w_related(self, e: ET.Element, w: Widget) -> None:
        self._action(e, w, "open_display", (("file", w.target + ".bob"), ("target", "tab")))
