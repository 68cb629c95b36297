"""A LIST page decoded one object at a time gives what ``json.loads`` of the whole page gives."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flag_scheduler.kube import Page

# JSON values with the characters that could confuse a scanner: brackets, braces, quotes, escapes.
TEXT = st.text(alphabet=st.sampled_from('ab{}[],:"\\/ \n\té€😀'), max_size=12)
VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                      | TEXT, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                      max_leaves=12)
OBJECTS = st.lists(st.dictionaries(TEXT, VALUES, max_size=5), max_size=6)


def decoded(text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    page = Page.decode(text)
    return list(page.items), page.meta


@settings(max_examples=50, deadline=None)
@given(items=OBJECTS, continue_token=TEXT, indent=st.sampled_from([None, 0, 2]),
       metadata_first=st.booleans())
def test_any_list_decodes_to_what_json_loads_gives(items: list[dict[str, Any]], continue_token: str,
                                                    indent: int | None, metadata_first: bool) -> None:
    meta = {"continue": continue_token, "resourceVersion": "42"}
    body = {"metadata": meta, "items": items} if metadata_first else {"items": items, "metadata": meta}
    text = json.dumps({"apiVersion": "flagscheduler.dev/v1alpha1", **body, "kind": "FlagScheduleList"},
                      indent=indent, ensure_ascii=False)
    assert decoded(text) == (items, meta)
    page = Page.decode(text)
    list(page.items)  # the metadata is known once the items are taken
    assert page.version == "42"


def test_the_api_servers_shape_and_an_empty_or_null_items() -> None:
    text = ('{"apiVersion":"flagscheduler.dev/v1alpha1","items":[{"metadata":{"name":"a","uid":"1"}},'
            '{"metadata":{"name":"b]}","uid":"2"}}],"kind":"FlagScheduleList",'
            '"metadata":{"continue":"eyJ2","remainingItemCount":15,"resourceVersion":"231953"}}')
    assert decoded(text) == (json.loads(text)["items"], json.loads(text)["metadata"])
    assert decoded('{"items":[],"metadata":{"resourceVersion":"7"}}') == ([], {"resourceVersion": "7"})
    assert decoded('{"items":null,"metadata":{"resourceVersion":"7"}}') == ([], {"resourceVersion": "7"})


@pytest.mark.parametrize("text", [
    "", "[]", '{"items":[{"a":1}', '{"items":[{"a":1}}', '{"items":[{"a":1},]}', '{"items" [1]}',
    '{"items":[1] "kind":"x"}', '{"items":[1],}', '{"items":[{"a":1}],"metadata":{"resourceVersion":"7"}',
    '{"items":[]} trailing', '{1:[]}', '{"items":[]}}',
])
def test_a_malformed_page_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        decoded(text)
