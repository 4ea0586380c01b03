"""Transcript files (`--output`, `--output-format`): cues at segment ends and pauses, parsed back by independent SRT
and WebVTT parsers with monotonic, non-overlapping cues; from `voxtral-runtime transcribe` and from `voxtral-client`
against a real server."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import srt
import webvtt

from servers import start_in_process
from signals import speechlike
from voxtral_client.cli import main as client_main
from voxtral_client.subtitles import MIN_CUE_S, Transcript, format_for
from voxtral_runtime.audio import write_wav


def parsed_srt(text: str) -> list[tuple[float, float, str]]:
    return [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(text)]


def parsed_vtt(text: str) -> list[tuple[float, float, str]]:
    return [(_seconds(c.start), _seconds(c.end), c.text) for c in webvtt.from_buffer(io.StringIO(text))]


def _seconds(clock: str) -> float:
    h, m, s = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def assert_well_formed(cues: list[tuple[float, float, str]]) -> None:
    assert cues, "no cues"
    for i, (start, end, text) in enumerate(cues):
        assert end > start and text.strip()
        if i:
            assert start >= cues[i - 1][1], "cues overlap or go back in time"


def test_cues_end_at_finals_and_pauses_and_render_in_every_format():
    t = Transcript()
    for word, start in ((" Hello", 0.0), (" there", 0.6), (" again", 2.0)):  # a 1.3 s pause before "again"
        t.add_text(word, start, start + 0.08)
    t.end_segment()  # a Final
    t.add_text(" next", 3.0, 3.08)
    t.add_text("", 3.1, 3.2)  # empty pieces (token ids only) add nothing
    cues = t.cues()
    assert [c.text for c in cues] == ["Hello there", "again", "next"]
    assert cues[0].start_s == 0.0 and cues[0].end_s == pytest.approx(0.68)
    assert cues[2].end_s - cues[2].start_s == pytest.approx(MIN_CUE_S)
    assert parsed_srt(t.render("srt")) == [(c.start_s, c.end_s, c.text) for c in cues]
    assert parsed_vtt(t.render("vtt")) == [(c.start_s, c.end_s, c.text) for c in cues]
    doc = json.loads(t.render("json"))
    assert doc["text"] == "Hello there again next" and doc["segments"][1] == {"id": 1, "start": 2.0,
                                                                              "end": cues[1].end_s, "text": "again"}
    assert t.render("text") == "Hello there\nagain\nnext\n"
    with pytest.raises(ValueError, match="unknown output format"):
        t.render("docx")


def test_long_speech_is_cut_at_word_boundaries_and_cues_never_overlap():
    t = Transcript()
    for i in range(300):  # 24 s of speech without a pause: a word every 0.16 s, in two pieces each
        t.add_text(" wo", i * 0.16, i * 0.16 + 0.08)
        t.add_text("rd", i * 0.16 + 0.08, i * 0.16 + 0.16)
    cues = t.cues()
    assert len(cues) > 3 and all(c.text.split() == ["word"] * len(c.text.split()) for c in cues)
    assert all(len(c.text) <= 84 and c.end_s - c.start_s <= 7.5 for c in cues)
    assert_well_formed(parsed_srt(t.render("srt")))


def test_odd_text_stays_one_cue_line():
    t = Transcript()
    t.add_text(" a\n\nb --> c", 0.0, 0.08)
    t.add_text(" d", 0.05, 0.06)  # overlapping and shorter piece times
    assert parsed_srt(t.render("srt")) == [(0.0, 0.5, "a b -> c d")]
    assert parsed_vtt(t.render("vtt"))[0][2] == "a b -> c d"


def test_format_for_extension():
    assert [format_for(p) for p in ("a.SRT", "b.vtt", "c.json", "d.txt", "e")] == ["srt", "vtt", "json", "text",
                                                                                   "text"]


@pytest.mark.slow
def test_runtime_transcribe_and_client_write_the_same_subtitles(bundles, tmp_path, capsys):
    bundle = bundles("xnnpack-stream")
    audio = np.concatenate([speechlike(2.0, seed=70).numpy(), np.zeros(16000 * 2, np.float32),
                            speechlike(2.0, seed=71).numpy()])
    wav = tmp_path / "pauses.wav"
    write_wav(wav, audio, 16000)
    local = subprocess.run([sys.executable, "-m", "voxtral_runtime.cli", "transcribe", str(bundle), "--audio_path",
                            str(wav), "--output-format", "vtt"], capture_output=True, text=True)
    assert local.returncode == 0, local.stderr
    local_cues = parsed_vtt(local.stdout)
    assert_well_formed(local_cues)
    server = start_in_process(bundle, max_sessions=1)
    try:
        out = tmp_path / "client.srt"
        assert client_main(["--file", str(wav), "--fast", "--server", f"127.0.0.1:{server.port}",
                            "--output", str(out)]) == 0
    finally:
        server.stop(0)
    live = capsys.readouterr().out
    client_cues = parsed_srt(out.read_text())
    assert client_cues == local_cues  # the same session, the same cues, whichever door
    assert " ".join(c[2] for c in client_cues) == " ".join(live.split())
