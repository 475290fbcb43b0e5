"""Builds RFC 8840 fragments (an ICE restart's 200 body) for the sdpfrag parser's tests.

The server answers ICE restarts with 422 (see README), so this lives with the tests until
restart is supported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from broadcast.protocol.sdpfrag import candidate_problem, ice_pwd_problem, ice_ufrag_problem

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def build_restart_answer(
    ufrag: str,
    pwd: str,
    ice_options: tuple[str, ...],
    candidates: Sequence[tuple[str, int, str]],
    ice_lite: bool = False,
) -> str:
    """The ``200 OK`` body answering an ICE restart (RFC 9725 §4.3).

    `candidates` are (mid, mline_index, value after ``candidate:``); each distinct m-line gets
    one dummy ``m=`` section in mline_index order. RFC 9725 requires the same ice-options and
    ice-lite as the SDP answer, so pass those through. CRLF line endings throughout:
    whip-whep.js extracts the credentials with ``/a=ice-ufrag:(.*)\\r\\n/``.
    Raises ValueError for invalid input: the values come from our own ICE agent.
    """
    for problem in (ice_ufrag_problem(ufrag), ice_pwd_problem(pwd)):
        if problem is not None:
            raise ValueError(problem)
    for tag in ice_options:
        if not _ICE_CHARS.fullmatch(tag):
            raise ValueError(f"ice-option {tag!r} is not 1*ice-char (RFC 8839 §5.6)")
    lines: list[str] = []
    if ice_lite:
        lines.append("a=ice-lite")
    if ice_options:
        lines.append("a=ice-options:" + " ".join(ice_options))
    lines += [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}"]
    sections: dict[tuple[int, str], list[str]] = {}
    indexes: dict[str, int] = {}
    for mid, index, value in candidates:
        if not mid or not _TOKEN.fullmatch(mid):
            raise ValueError(f"mid {mid!r} is not a token")
        if indexes.setdefault(mid, index) != index:
            raise ValueError(f"mid {mid!r} is given two m-line indexes")
        problem = candidate_problem(value)
        if problem is not None:
            raise ValueError(problem)
        sections.setdefault((index, mid), []).append(value)
    for (_, mid), values in sorted(sections.items()):
        lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 0", f"a=mid:{mid}"]
        lines += [f"a=candidate:{value}" for value in values]
        lines.append("a=end-of-candidates")
    if not sections:
        # Gathering finished without a candidate: say so once, at session level.
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"
