"""A safetensors header is refused with the words main 9e51ef3 used, and read to the same entries, now that its
entries are parsed into tuples as the JSON is read (`_CompactEntries`) and each dtype and shape validated once.

The refusals were printed by main's `parse_safetensors_header` from these inputs; the headers that make the fast
path meet something it must not vouch for (an entry spelt where no entry belongs, a bool or float dimension equal
to a shape already validated) are the ones a shortcut would get wrong.
"""

from __future__ import annotations

import json
import struct

import pytest

from quant_core.errors import LimitExceeded, NibbleError, TensorFileError
from quant_core.tensorio.safetensors_io import (
    _checked_entries,
    parse_safetensors_entries,
    parse_safetensors_header,
    unique_keys,
)

E = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
#: (what the header holds, its JSON, max_tensors, max_elements)
CASES = [
    ("the header itself spelt as an entry", E, 100, 1 << 20),
    ("__metadata__ spelt as an entry", '{"__metadata__": ' + E + ', "a": ' + E + '}', 100, 1 << 20),
    ("a metadata value spelt as an entry", '{"__metadata__": {"k": ' + E + '}, "a": ' + E + '}', 100, 1 << 20),
    ("a bool dimension after the same shape in integers",
     '{"a": {"dtype": "F32", "shape": [1, 5], "data_offsets": [0, 20]}, '
     '"b": {"dtype": "F32", "shape": [true, 5], "data_offsets": [20, 40]}}', 100, 1 << 20),
    ("a float dimension after the same shape in integers",
     '{"a": {"dtype": "F32", "shape": [1, 5], "data_offsets": [0, 20]}, '
     '"b": {"dtype": "F32", "shape": [1.0, 5], "data_offsets": [20, 40]}}', 100, 1 << 20),
    ("an entry spelt inside a shape",
     '{"a": {"dtype": "F32", "shape": [' + E + '], "data_offsets": [0, 4]}}', 100, 1 << 20),
    ("an entry spelt inside data_offsets",
     '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [' + E + ', 4]}}', 100, 1 << 20),
    ("a key twice in an entry",
     '{"a": {"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', 100, 1 << 20),
    ("a tensor name twice", '{"a": ' + E + ', "a": ' + E + '}', 100, 1 << 20),
    ("a shape past max_elements after a valid entry",
     '{"a": ' + E + ', "b": {"dtype": "F32", "shape": [64, 64], "data_offsets": [4, 16388]}}', 100, 1000),
    ("bytes that disagree with a shape already seen",
     '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
     '"b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 12]}}', 100, 1 << 20),
    ("a gap", '{"a": ' + E + ', "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}', 100, 1 << 20),
    ("an overlap", '{"a": ' + E + ', "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}', 100, 1 << 20),
    ("begin past end", '{"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}', 100, 1 << 20),
    ("a bool offset", '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [false, 4]}}', 100, 1 << 20),
    ("a lone surrogate in a name", '{"a\\ud800b": ' + E + '}', 100, 1 << 20),
    ("a lone surrogate in metadata", '{"__metadata__": {"k": "v\\udc00"}, "a": ' + E + '}', 100, 1 << 20),
    ("more tensors than max_tensors",
     '{"a": ' + E + ', "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', 1, 1 << 20),
    ("an unknown dtype after a valid one",
     '{"a": ' + E + ', "b": {"dtype": "F31", "shape": [1], "data_offsets": [4, 8]}}', 100, 1 << 20),
    ("an entry of four keys", '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}', 100, 1 << 20),
    ("keys in another order, one entry wrong",
     '{"a": {"shape": [1], "dtype": "F32", "data_offsets": [0, 4]}, '
     '"b": {"data_offsets": [4, 9], "shape": [1], "dtype": "F32"}}', 100, 1 << 20),
    ("not JSON after valid entries", '{"a": ' + E + ', "b": ', 100, 1 << 20),
    ("a shape nested deep", '{"a": {"dtype": "F32", "shape": ' + "[" * 5000 + "]" * 5000 + ', "data_offsets": [0, 4]}}',
     100, 1 << 20),
]

#: main 9e51ef3's refusal of each case: (case, exception type, detail)
MAIN_REFUSALS = [
    ("the header itself spelt as an entry", "TensorFileError",
     "safetensors entry 'dtype' is str, not an object"),
    ("__metadata__ spelt as an entry", "TensorFileError",
     "safetensors __metadata__ must be an object of string values"),
    ("a metadata value spelt as an entry", "TensorFileError",
     "safetensors __metadata__ must be an object of string values"),
    ("a bool dimension after the same shape in integers", "TensorFileError",
     "safetensors entry 'b' has shape [True, 5], not a list of integers ≥ 0"),
    ("a float dimension after the same shape in integers", "TensorFileError",
     "safetensors entry 'b' has shape [1.0, 5], not a list of integers ≥ 0"),
    ("an entry spelt inside a shape", "TensorFileError",
     "safetensors entry 'a' has shape [{'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]}], not a list"
     " of integers ≥ 0"),
    ("an entry spelt inside data_offsets", "TensorFileError",
     "safetensors entry 'a' has data_offsets [{'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]}, 4], "
     "not [begin, end] with 0 ≤ begin ≤ end"),
    ("a key twice in an entry", "TensorFileError",
     "safetensors header gives the key 'dtype' twice in one JSON object; send it once"),
    ("a tensor name twice", "TensorFileError",
     "safetensors header gives the key 'a' twice in one JSON object; send it once"),
    ("a shape past max_elements after a valid entry", "LimitExceeded",
     "elements of tensor 'b' is 4096, over the limit of 1000"),
    ("bytes that disagree with a shape already seen", "TensorFileError",
     "safetensors entry 'b': F32 shape [2] needs 8 bytes, data_offsets [8, 12] span 4"),
    ("a gap", "TensorFileError",
     "safetensors entry 'b' starts at 8 but the previous tensor ends at 4: it leaves a gap before it"),
    ("an overlap", "TensorFileError",
     "safetensors entry 'b' starts at 2 but the previous tensor ends at 4: it overlaps the previous tensor"),
    ("begin past end", "TensorFileError",
     "safetensors entry 'a' has data_offsets [4, 0], not [begin, end] with 0 ≤ begin ≤ end"),
    ("a bool offset", "TensorFileError",
     "safetensors entry 'a' has data_offsets [False, 4], not [begin, end] with 0 ≤ begin ≤ end"),
    ("a lone surrogate in a name", "TensorFileError",
     "safetensors header holds a string with a lone UTF-16 surrogate (U+D800) at character 1: not Unicode "
     "text (the format's header is UTF-8 JSON)"),
    ("a lone surrogate in metadata", "TensorFileError",
     "safetensors header holds a string with a lone UTF-16 surrogate (U+DC00) at character 1: not Unicode "
     "text (the format's header is UTF-8 JSON)"),
    ("more tensors than max_tensors", "LimitExceeded",
     "tensors in file is 2, over the limit of 1"),
    ("an unknown dtype after a valid one", "TensorFileError",
     "safetensors entry 'b' has dtype 'F31'; supported: BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F16, "
     "BF16, F32, F64, F8_E4M3, F8_E5M2"),
    ("an entry of four keys", "TensorFileError",
     "safetensors entry 'a' has keys ['data_offsets', 'dtype', 'shape', 'x'], expected dtype, shape, "
     "data_offsets"),
    ("keys in another order, one entry wrong", "TensorFileError",
     "safetensors entry 'b': F32 shape [1] needs 4 bytes, data_offsets [4, 9] span 5"),
    ("not JSON after valid entries", "TensorFileError",
     "safetensors header is not valid JSON: JSONDecodeError: Expecting value: line 1 column 68 (char 67)"),
    ("a shape nested deep", "TensorFileError",
     "safetensors header is not valid JSON: RecursionError: maximum recursion depth exceeded while "
     "decoding a JSON array from a unicode string"),
]


def _prefix(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(data)) + data


@pytest.mark.parametrize(("label", "text", "max_tensors", "max_elements"), CASES, ids=[case[0] for case in CASES])
def test_a_malformed_header_is_refused_with_mains_words(label: str, text: str, max_tensors: int,
                                                        max_elements: int) -> None:
    refusal = {case: (kind, detail) for case, kind, detail in MAIN_REFUSALS}[label]
    with pytest.raises(NibbleError) as caught:
        parse_safetensors_header(_prefix(text), None, max_tensors=max_tensors, max_elements=max_elements)
    assert (type(caught.value).__name__, caught.value.detail) == refusal
    assert isinstance(caught.value, (TensorFileError, LimitExceeded))


def _header(entries: list[tuple[str, dict[str, object]]], metadata: dict[str, str] | None = None) -> str:
    members = [f"{json.dumps('__metadata__')}: {json.dumps(metadata)}"] if metadata is not None else []
    members += [f"{json.dumps(name)}: {{" + ", ".join(f"{json.dumps(key)}: {json.dumps(value)}"
                                                      for key, value in entry.items()) + "}"
                for name, entry in entries]
    return "{" + ", ".join(members) + "}"


VALID = {
    "repeated shapes": _header([(f"w{i}", {"dtype": "BF16", "shape": [4, 8], "data_offsets": [64 * i, 64 * i + 64]})
                                for i in range(5)]),
    "offsets out of name order, metadata, keys in any order": _header([
        ("b", {"shape": [2, 2], "dtype": "F32", "data_offsets": [16, 32]}),
        ("a", {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}),
        ("c", {"data_offsets": [32, 33], "dtype": "U8", "shape": [1]})], {"format": "pt"}),
    "empty tensors at one offset, a 0-d tensor": _header([
        ("z", {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]}),
        ("y", {"dtype": "F32", "shape": [3, 0], "data_offsets": [8, 8]}),
        ("s", {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}),
        ("x", {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]})]),
}


@pytest.mark.parametrize("name", list(VALID))
def test_a_header_reads_to_the_entries_the_plain_parse_gives(name: str) -> None:
    prefix = _prefix(VALID[name])
    header_bytes = len(prefix) - 8
    plain = _checked_entries(prefix, header_bytes, None, 100, 1 << 20, {}, unique_keys)
    assert parse_safetensors_entries(prefix, None, max_tensors=100, max_elements=1 << 20) == plain
    header = parse_safetensors_header(prefix, None, max_tensors=100, max_elements=1 << 20)
    assert [(entry_name, entry.dtype, entry.shape, entry.begin, entry.end)
            for entry_name, entry in header.entries.items()] == plain[0]
    assert header.data_offset == plain[2] and header.metadata == plain[1]


def test_entries_of_one_shape_share_it_and_empty_tensors_keep_the_headers_order() -> None:
    entries, _, _ = parse_safetensors_entries(_prefix(VALID["repeated shapes"]), None)
    assert len({id(shape) for _, _, shape, _, _ in entries}) == 1  # validated once, the shape tuple shared
    entries, _, _ = parse_safetensors_entries(_prefix(VALID["empty tensors at one offset, a 0-d tensor"]), None)
    assert [name for name, *_ in entries] == ["s", "z", "y", "x"]
