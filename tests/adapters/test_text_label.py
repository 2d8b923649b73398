import io
import json

import numpy as np
import pytest
import torch

from polymodal.adapters import DecodeError, get
from polymodal.adapters.text import CLS, NUM_SPECIAL, SEP, VOCAB_SIZE, decode_ids


def test_utf8_text_becomes_shifted_byte_ids():
    field = get("text")().decode({"__key__": "k", "txt": "héllo".encode()})
    raw = list("héllo".encode())
    assert field.values.dtype == torch.int16 and field.values.shape == (len(raw), 1)
    assert field.values[:, 0].tolist() == [b + NUM_SPECIAL for b in raw]
    assert field.grid == (len(raw),)
    assert decode_ids(field.values) == "héllo"
    assert int(field.values.max()) < VOCAB_SIZE


def test_truncation_and_special_ids():
    text = get("text")(max_length=4, add_special=True)
    field = text.decode({"__key__": "k", "txt": b"abcdef"})
    assert field.values[:, 0].tolist() == [CLS, ord("a") + 6, ord("b") + 6, SEP]
    assert get("text")(max_length=3).decode({"txt": b"abcdef"}).values.shape == (3, 1)


def test_pre_tokenized_ids_from_npy_and_json():
    buf = io.BytesIO()
    np.save(buf, np.array([5, 70000, 3], dtype=np.int64))
    field = get("text")().decode({"__key__": "k", "npy": buf.getvalue()})
    assert field.values.dtype == torch.int32 and field.values[:, 0].tolist() == [5, 70000, 3]
    field = get("text")().decode({"__key__": "k", "json": json.dumps([1, 2, 300]).encode()})
    assert field.values.dtype == torch.int16 and field.values[:, 0].tolist() == [1, 2, 300]
    field = get("text")().decode({"__key__": "k", "json": json.dumps("hi").encode()})
    assert decode_ids(field.values) == "hi"


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ({"txt": b"\xff\xfe bad utf8"}, r"can.t decode byte"),
        ({"json": b"[1, -2]"}, "non-negative"),
        ({"json": b"[[1, 2]]"}, "1-d integer"),
        ({"npy": b"not an npy file"}, "npy"),
    ],
)
def test_bad_text_raises_decode_error(member, reason):
    with pytest.raises(DecodeError, match=reason) as err:
        get("text")().decode({"__key__": "doc7", **member})
    assert err.value.key == "doc7" and err.value.field == "text"


def test_pickled_npy_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="pickle"):
        get("text")().decode({"__key__": "k", "npy": buf.getvalue()})


def test_single_label_from_id_name_and_json():
    label = get("label")(classes=["cat", "dog", "bird"])
    for member in ({"cls": b"2"}, {"txt": b"bird\n"}, {"json": b'{"label": "bird"}'}):
        field = label.decode({"__key__": "k", **member})
        assert field.values.dtype == torch.int64 and field.values.tolist() == [[2]]


def test_multi_label_multi_hot():
    label = get("label")(num_classes=6, multi_label=True)
    field = label.decode({"__key__": "k", "cls": b"1,4"})
    assert field.values.dtype == torch.uint8 and field.values.tolist() == [[0, 1, 0, 0, 1, 0]]
    field = label.decode({"__key__": "k", "json": b"[0, 5]"})
    assert field.values.tolist() == [[1, 0, 0, 0, 0, 1]]


@pytest.mark.parametrize(
    ("kwargs", "member", "reason"),
    [
        ({"num_classes": 3}, {"cls": b"3"}, "outside"),
        ({}, {"cls": b"-1"}, "outside"),
        ({}, {"txt": b"zebra"}, "neither an integer"),
        ({}, {"cls": b"1 2"}, "single-label"),
        ({}, {"json": b'{"other": 1}'}, "no 'label' key"),
        ({}, {"cls": b"   "}, "no label"),
    ],
)
def test_bad_labels_raise(kwargs, member, reason):
    with pytest.raises(DecodeError, match=reason):
        get("label")(**kwargs).decode({"__key__": "k", **member})


def test_multi_label_needs_a_width():
    with pytest.raises(ValueError, match="num_classes"):
        get("label")(multi_label=True)
