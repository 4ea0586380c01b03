"""Tekken decoding: control ids are silent, characters split over tokens come out whole, errors name the field."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from voxtral_runtime.tokenizer import StreamingDetokenizer, Tekken, TokenizerError

EMOJI = "😀"


@pytest.fixture(scope="module")
def tekken(tiny_dir):
    return Tekken.load(tiny_dir / "tekken.json")


def _id_of(tekken: Tekken, piece: bytes) -> int:
    """Model id of a vocabulary piece (searching past the single-byte pieces)."""
    return tekken.id_bytes.index(piece, tekken.n_special + 256) if len(piece) > 1 else tekken.n_special + piece[0]


def test_loads_real_layout(tekken, tiny_dir):
    raw = json.loads((tiny_dir / "tekken.json").read_text())
    assert tekken.vocab_size == raw["config"]["default_vocab_size"] == 1536
    assert tekken.n_special == 1000
    assert (tekken.bos_id, tekken.eos_id, tekken.streaming_pad_id, tekken.streaming_word_id) == (1, 2, 32, 33)
    # Only the first vocab_size - n_special entries are used; the list has extra entries beyond that.
    assert len(raw["vocab"]) > tekken.vocab_size - tekken.n_special
    assert len(tekken.id_bytes) == tekken.vocab_size
    assert tekken.token_bytes(1000) == b"\x00" and tekken.token_bytes(1000 + ord("a")) == b"a"
    assert Tekken.load(tiny_dir).vocab_size == tekken.vocab_size  # a model directory works too


def test_token_bytes_range(tekken):
    assert tekken.token_bytes(0) == b"" and tekken.token_bytes(999) == b""
    assert tekken.token_bytes(tekken.vocab_size - 1) != b""
    for bad in (-1, tekken.vocab_size):
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            tekken.token_bytes(bad)
    assert tekken.is_special(33) and not tekken.is_special(1000) and not tekken.is_special(-1)


def test_control_ids_never_produce_text(tekken):
    detok = StreamingDetokenizer(tekken)
    assert all(detok.push(i) == "" for i in range(tekken.n_special))
    assert detok.flush() == ""
    assert tekken.decode(range(tekken.n_special)) == ""


def test_words_keep_their_leading_space(tekken):
    ids = [tekken.bos_id, _id_of(tekken, b" hello"), tekken.streaming_word_id, _id_of(tekken, b" world"),
           tekken.streaming_pad_id, tekken.eos_id]
    assert tekken.decode(ids) == " hello world"
    detok = StreamingDetokenizer(tekken)
    assert [detok.push(i) for i in ids] == ["", " hello", "", " world", "", ""]


@pytest.mark.parametrize("char", [EMOJI, "€", "語"])
def test_split_character_comes_out_whole_once_complete(tekken, char):
    encoded = char.encode()
    split = next(n for n in (1, 2) if encoded[:n] in tekken.id_bytes[tekken.n_special + 256:])
    first, second = _id_of(tekken, encoded[:split]), _id_of(tekken, encoded[split:])
    detok = StreamingDetokenizer(tekken)
    assert detok.push(first) == ""  # incomplete: nothing yet
    assert detok.push(tekken.streaming_word_id) == ""  # a control id in between does not break the character
    assert detok.push(second) == char
    assert detok.flush() == ""
    assert tekken.decode([first, second]) == char


def test_single_byte_pieces_reassemble(tekken):
    ids = [tekken.n_special + b for b in " Zürich 😀".encode()]
    detok = StreamingDetokenizer(tekken)
    out = [detok.push(i) for i in ids]
    assert "".join(out) == " Zürich 😀"
    assert out[-4:] == ["", "", "", EMOJI]  # the 4-byte character appears only with its last byte


def test_flush_truncated_character_gives_replacement_and_resets(tekken):
    detok = StreamingDetokenizer(tekken)
    assert detok.push(_id_of(tekken, EMOJI.encode()[:2])) == ""
    assert detok.flush() == "\ufffd"
    assert detok.push(_id_of(tekken, b" hello")) == " hello"  # decoder state was reset


def test_decode_matches_push_concatenation(tekken):
    rng = np.random.default_rng(0)
    detok = StreamingDetokenizer(tekken)
    for _ in range(20):
        # Mix control ids, single bytes (often invalid UTF-8 on their own) and multi-byte pieces.
        ids = rng.integers(0, tekken.vocab_size, size=int(rng.integers(1, 60))).tolist()
        ids += [int(i) for i in rng.integers(tekken.n_special + 0x80, tekken.n_special + 0x100, size=5)]
        streamed = "".join(detok.push(i) for i in ids) + detok.flush()
        assert streamed == tekken.decode(ids)
        assert len(streamed) > 0


def test_vocab_size_mismatch(tekken):
    tekken.check_vocab_size(tekken.vocab_size)  # matching: no error
    with pytest.raises(TokenizerError) as info:
        tekken.check_vocab_size(131072)
    message = str(info.value)
    assert "131072" in message and str(tekken.vocab_size) in message and "tekken.json" in message


def _broken(tiny_dir, tmp_path, edit):
    data = json.loads((tiny_dir / "tekken.json").read_text())
    edit(data)
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(data))
    return path


def _set_bad_base64(data):
    data["vocab"][5]["token_bytes"] = "not base64!"


def _remove_special(data):
    data["special_tokens"] = [s for s in data["special_tokens"] if s["token_str"] != "[STREAMING_WORD]"]


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("config"), "'config'"),
    (lambda d: d["config"].pop("default_vocab_size"), "config.default_vocab_size"),
    (lambda d: d["config"].update(default_num_special_tokens="1000"), "config.default_num_special_tokens"),
    (lambda d: d.pop("vocab"), "'vocab'"),
    (lambda d: d.update(vocab=d["vocab"][:100]), "'vocab'"),
    (lambda d: d["vocab"][7].pop("token_bytes"), "vocab[7].token_bytes"),
    (_set_bad_base64, "vocab[5].token_bytes"),
    (lambda d: d.pop("special_tokens"), "'special_tokens'"),
    (lambda d: d["special_tokens"][3].pop("rank"), "special_tokens[3].rank"),
    (_remove_special, "[STREAMING_WORD]"),
])
def test_malformed_tekken_names_file_and_field(tiny_dir, tmp_path, edit, field):
    path = _broken(tiny_dir, tmp_path, edit)
    with pytest.raises(TokenizerError) as info:
        Tekken.load(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        Tekken.load(tmp_path / "nope.json")
    bad = tmp_path / "tekken.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        Tekken.load(bad)


def test_from_dict_minimal():
    data = {
        "config": {"default_vocab_size": 5, "default_num_special_tokens": 3},
        "vocab": [{"rank": i, "token_bytes": base64.b64encode(p).decode()} for i, p in enumerate([b"a", b"b", b"c"])],
        "special_tokens": [{"rank": 0, "token_str": "<s>"}, {"rank": 1, "token_str": "</s>"},
                           {"rank": 2, "token_str": "[STREAMING_PAD]"}, {"rank": 2, "token_str": "[STREAMING_WORD]"}],
    }
    tok = Tekken.from_dict(data)
    assert tok.vocab_size == 5 and tok.decode([0, 3, 1, 4, 2]) == "ab"  # vocab entry "c" is beyond the used size
