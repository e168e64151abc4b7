"""EPICS access-security files (ACF): parse the subset beamlines use and evaluate a rule set (pure).

Syntax (EPICS base's ``asLib``, the subset accepted here)::

    # comment
    UAG(operators) { user2bmb, "2bmb" }
    HAG(consoles)  { 2bmb-console, tomo1 }
    ASG(DEFAULT)   { RULE(1, READ) }
    ASG(SETTINGS)  { RULE(1, READ)  RULE(1, WRITE, TRAPWRITE) { UAG(operators) HAG(consoles) } }

Evaluation follows EPICS: a client gets the highest access of the rules of
the PV's group that apply to it; a rule applies when its level is at least
the field's level and the client's user is in one of its UAGs (if it names
any) and its host is in one of its HAGs (if it names any).  WRITE implies
READ.  A PV whose group the file does not define falls into ``DEFAULT``; a
file without ``ASG(DEFAULT)`` gets an empty one (no access), as in EPICS.
User names match exactly, host names case-insensitively.

Levels: the IOC serves only each record's value (caproto exposes no other
fields), which EPICS puts at level 0 (``ASL0``), so ``RULE(0, ...)`` and
``RULE(1, ...)`` both apply to every PV here.

Not supported, and refused with a clear error rather than ignored (a
conditional rule read as unconditional would grant too much): ``INPx`` and
``CALC``.  ``TRAPWRITE``/``NOTRAPWRITE`` are accepted; every put is audited anyway.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple

FIELD_LEVEL = 0   # the level of a record's VAL field (ASL0): the only field the IOC serves


class AcfError(ValueError):
    """A malformed access-security file: one line naming the source and line."""


class Access(enum.IntEnum):
    """What a rule grants (ordered: WRITE includes READ)."""

    NONE = 0
    READ = 1
    WRITE = 2


@dataclass(frozen=True)
class Rule:
    """``RULE(level, access) { UAG(...) HAG(...) }``: empty UAG/HAG lists match everyone."""

    level: int
    access: Access
    uags: Tuple[str, ...] = ()
    hags: Tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessConfig:
    """A parsed file: user groups, host groups, and the rules of each access-security group."""

    uags: Dict[str, FrozenSet[str]] = field(default_factory=dict)
    hags: Dict[str, FrozenSet[str]] = field(default_factory=dict)
    asgs: Dict[str, Tuple[Rule, ...]] = field(default_factory=dict)
    source: str = "<acf>"

    def access(self, asg: str, user: str, host: str, level: int = FIELD_LEVEL) -> Access:
        """The access ``user`` on ``host`` has to a field of ``level`` in group ``asg``."""
        rules = self.asgs.get(asg)
        if rules is None:
            rules = self.asgs.get("DEFAULT", ())
        host = (host or "").lower()
        best = Access.NONE
        for r in rules:
            if r.level < level or r.access <= best:
                continue
            if r.uags and not any(user in self.uags[u] for u in r.uags):
                continue
            if r.hags and not any(host in self.hags[h] for h in r.hags):
                continue
            best = r.access
        return best


# -- parsing -------------------------------------------------------------------------------------
_TOKEN = re.compile(r'(?P<nl>\n)|(?P<ws>[ \t\r\f\v]+)|(?P<comment>#[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*")'
                    r'|(?P<word>[A-Za-z0-9_\-+:.\[\]<>;$/@*]+)|(?P<punct>[(){},])|(?P<bad>.)')


@dataclass(frozen=True)
class _Tok:
    text: str
    line: int
    quoted: bool = False


def _tokens(text: str, source: str) -> Iterator[_Tok]:
    line = 1
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "nl":
            line += 1
        elif kind == "str":
            yield _Tok(re.sub(r"\\(.)", r"\1", m.group()[1:-1]), line, True)
        elif kind in ("word", "punct"):
            yield _Tok(m.group(), line)
        elif kind == "bad":
            what = "unterminated string" if m.group() == '"' else f"unexpected character {m.group()!r}"
            raise AcfError(f"{source}:{line}: {what}")


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.toks: List[_Tok] = list(_tokens(text, source))
        self.i = 0

    def error(self, msg: str, tok: Optional[_Tok] = None) -> AcfError:
        tok = tok or (self.toks[self.i] if self.i < len(self.toks) else None)
        line = tok.line if tok else (self.toks[-1].line if self.toks else 1)
        return AcfError(f"{self.source}:{line}: {msg}")

    def peek(self) -> Optional[_Tok]:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expect: Optional[str] = None) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise self.error(f"unexpected end of file{f', expected {expect!r}' if expect else ''}")
        if expect is not None and (tok.text != expect or tok.quoted):
            raise self.error(f"expected {expect!r}, got {tok.text!r}", tok)
        self.i += 1
        return tok

    def name(self, what: str) -> str:
        tok = self.take()
        if not tok.quoted and tok.text in "(){},":
            raise self.error(f"expected {what}, got {tok.text!r}", tok)
        return tok.text

    def names_in(self, open_: str, close: str, what: str) -> List[str]:
        """``open_ name, name, ... close`` (an empty list allowed)."""
        self.take(open_)
        out: List[str] = []
        while True:
            tok = self.peek()
            if tok is not None and tok.text == close and not tok.quoted:
                self.take()
                return out
            out.append(self.name(what))
            tok = self.peek()
            if tok is not None and tok.text == "," and not tok.quoted:
                self.take()

    def parse(self) -> AccessConfig:
        uags: Dict[str, FrozenSet[str]] = {}
        hags: Dict[str, FrozenSet[str]] = {}
        asgs: Dict[str, Tuple[Rule, ...]] = {}
        refs: List[Tuple[str, str, _Tok]] = []   # (kind, name, where): checked once everything is read
        while self.peek() is not None:
            kw = self.take()
            word = kw.text.upper()
            if word not in ("UAG", "HAG", "ASG"):
                raise self.error(f"expected UAG, HAG or ASG, got {kw.text!r}", kw)
            self.take("(")
            gname = self.name(f"{word} name")
            self.take(")")
            table = {"UAG": uags, "HAG": hags, "ASG": asgs}[word]
            if gname in table:
                raise self.error(f"{word}({gname}) defined twice", kw)
            if word == "ASG":
                table[gname] = self.asg_body(refs)
                continue
            members = self.names_in("{", "}", "a user name" if word == "UAG" else "a host name")
            if not members:
                raise self.error(f"{word}({gname}) is empty", kw)
            table[gname] = frozenset(m.lower() for m in members) if word == "HAG" else frozenset(members)
        for kind, gname, tok in refs:
            if gname not in (uags if kind == "UAG" else hags):
                raise self.error(f"{kind}({gname}) is used in a RULE but not defined", tok)
        asgs.setdefault("DEFAULT", ())
        return AccessConfig(uags, hags, asgs, self.source)

    def asg_body(self, refs: List[Tuple[str, str, _Tok]]) -> Tuple[Rule, ...]:
        rules: List[Rule] = []
        tok = self.peek()
        if tok is None or tok.text != "{":
            return ()   # ASG(name) with no body: no rules
        self.take("{")
        while True:
            tok = self.take()
            if tok.text == "}" and not tok.quoted:
                return tuple(rules)
            word = tok.text.upper()
            if re.fullmatch(r"INP[A-L]", word) or word == "CALC":
                raise self.error(f"{tok.text} is not supported (conditional rules); remove it", tok)
            if word != "RULE":
                raise self.error(f"expected RULE or '}}', got {tok.text!r}", tok)
            rules.append(self.rule(tok, refs))

    def rule(self, kw: _Tok, refs: List[Tuple[str, str, _Tok]]) -> Rule:
        args = self.names_in("(", ")", "a RULE argument")
        if len(args) not in (2, 3):
            raise self.error("RULE takes (level, NONE|READ|WRITE[, TRAPWRITE|NOTRAPWRITE])", kw)
        try:
            level = int(args[0])
        except ValueError:
            raise self.error(f"RULE level must be 0 or 1, got {args[0]!r}", kw) from None
        if level not in (0, 1):
            raise self.error(f"RULE level must be 0 or 1, got {level}", kw)
        try:
            access = Access[args[1].upper()]
        except KeyError:
            raise self.error(f"RULE access must be NONE, READ or WRITE, got {args[1]!r}", kw) from None
        if len(args) == 3 and args[2].upper() not in ("TRAPWRITE", "NOTRAPWRITE"):
            raise self.error(f"RULE option must be TRAPWRITE or NOTRAPWRITE, got {args[2]!r}", kw)
        uags: List[str] = []
        hags: List[str] = []
        tok = self.peek()
        if tok is not None and tok.text == "{" and not tok.quoted:
            self.take("{")
            while True:
                tok = self.take()
                if tok.text == "}" and not tok.quoted:
                    break
                word = tok.text.upper()
                if word == "CALC":
                    raise self.error("CALC is not supported (conditional rules); remove it", tok)
                if word not in ("UAG", "HAG"):
                    raise self.error(f"expected UAG(...), HAG(...) or '}}' in RULE, got {tok.text!r}", tok)
                names = self.names_in("(", ")", f"a {word} name")
                if not names:
                    raise self.error(f"{word}() names no group", tok)
                (uags if word == "UAG" else hags).extend(names)
                refs.extend((word, n, tok) for n in names)
        return Rule(level, access, tuple(uags), tuple(hags))


def parse_acf(text: str, source: str = "<acf>") -> AccessConfig:
    """Parse ACF text; AcfError ``'<source>:<line>: <reason>'`` when it is malformed."""
    return _Parser(text, source).parse()


__all__ = ["AcfError", "Access", "AccessConfig", "Rule", "parse_acf", "FIELD_LEVEL"]
