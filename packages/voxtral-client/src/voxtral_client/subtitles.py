"""Transcripts as files: timed text cut into cues at segment ends and pauses, written as plain text, JSON, SRT or
WebVTT (`--output-format`, `--output` of `voxtral-client` and `voxtral-runtime transcribe`).

Torch-free, so the client and the runtime share it. The times are those of the pieces of text (seconds of the
client's audio; a piece spans the 80 ms token it describes), so a cue starts with its first word and ends with its
last. Cues never overlap and never go back in time; each lasts at least MIN_CUE_S unless the next one starts sooner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("text", "json", "srt", "vtt")
PAUSE_S = 0.8  # a gap at least this long between two pieces of text starts a new cue
MAX_CUE_S = 7.0  # a cue this long ends at the next word boundary
MAX_CUE_CHARS = 84  # two lines of 42 characters, the usual subtitle limit
MIN_CUE_S = 0.5  # long enough to read a short word


@dataclass
class Cue:
    start_s: float
    end_s: float
    text: str


def format_for(path: str | Path) -> str:
    """The format a file name asks for by its extension (.json, .srt, .vtt; anything else is text)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else "text"


class Transcript:
    """Collects timed text as it arrives: `add_text` for each piece, `end_segment` at each segment end (a Final)."""

    def __init__(self):
        self._cues: list[Cue] = []
        self._pieces: list[tuple[str, float, float]] = []  # the open cue's pieces

    def add_text(self, text: str, start_s: float, end_s: float) -> None:
        if not text:
            return
        if self._pieces:
            first, last = self._pieces[0], self._pieces[-1]
            chars = sum(len(p[0]) for p in self._pieces) + len(text)
            at_word = text[0].isspace()
            if (start_s - last[2] >= PAUSE_S
                    or at_word and (end_s - first[1] > MAX_CUE_S or chars > MAX_CUE_CHARS)):
                self.end_segment()
        self._pieces.append((text, start_s, end_s))

    def end_segment(self) -> None:
        text = " ".join("".join(p[0] for p in self._pieces).split())  # one line: a blank line would end an SRT cue
        if text:
            self._cues.append(Cue(self._pieces[0][1], max(p[2] for p in self._pieces), text))
        self._pieces = []

    @property
    def text(self) -> str:
        return " ".join(c.text for c in self.cues())

    def cues(self) -> list[Cue]:
        """The cues so far (the open one included), with times made monotonic and non-overlapping."""
        cues = list(self._cues)
        if self._pieces:
            open_cue = Transcript()
            open_cue._pieces = list(self._pieces)
            open_cue.end_segment()
            cues += open_cue._cues
        out: list[Cue] = []
        for i, cue in enumerate(cues):
            start = max(cue.start_s, out[-1].end_s if out else 0.0)
            end = max(cue.end_s, start + MIN_CUE_S)
            if i + 1 < len(cues):
                end = min(end, max(cues[i + 1].start_s, start + 0.001))
            out.append(Cue(round(start, 3), round(max(end, start + 0.001), 3), cue.text))
        return out

    def render(self, fmt: str) -> str:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
        cues = self.cues()
        if fmt == "text":
            return "".join(c.text + "\n" for c in cues)
        if fmt == "json":
            segments = [{"id": i, "start": c.start_s, "end": c.end_s, "text": c.text} for i, c in enumerate(cues)]
            return json.dumps({"text": " ".join(c.text for c in cues), "segments": segments}, ensure_ascii=False,
                              indent=1) + "\n"
        if fmt == "srt":
            return "".join(f"{i}\n{_clock(c.start_s, ',')} --> {_clock(c.end_s, ',')}\n{_cue_text(c)}\n\n"
                           for i, c in enumerate(cues, 1))
        return "WEBVTT\n\n" + "".join(f"{_clock(c.start_s, '.')} --> {_clock(c.end_s, '.')}\n{_cue_text(c)}\n\n"
                                      for c in cues)

    def write(self, path: str | Path, fmt: str | None = None) -> None:
        Path(path).write_text(self.render(fmt or format_for(path)), encoding="utf-8")


def _cue_text(cue: Cue) -> str:
    return cue.text.replace("-->", "->")  # the timing line's arrow may not appear in a cue's text


def _clock(seconds: float, decimal: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{decimal}{ms % 1000:03d}"
