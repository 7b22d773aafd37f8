from __future__ import annotations

from fedengine_gateway.errors import MAX_ERRORS, MAX_LOC_CHARS, MAX_MESSAGE_CHARS, field_errors


def test_errors_keep_loc_msg_and_type_and_drop_input_and_context() -> None:
    errors = [
        {
            "type": "string_too_long",
            "loc": ("body", "task_name"),
            "msg": "String should have at most 200 characters",
            "input": "x" * 10_000_000,
            "ctx": {"max_length": 200},
        }
    ]
    assert field_errors(errors) == [
        {
            "loc": ["body", "task_name"],
            "msg": "String should have at most 200 characters",
            "type": "string_too_long",
        }
    ]


def test_long_keys_and_messages_are_clipped_and_many_errors_summarised() -> None:
    errors = [
        {"type": "extra_forbidden", "loc": ("body", "k" * 10_000, 3), "msg": "m" * 10_000}
    ] * (MAX_ERRORS + 5)
    items = field_errors(errors)
    assert len(items) == MAX_ERRORS + 1
    first = items[0]
    assert len(first["loc"][1]) == MAX_LOC_CHARS and first["loc"][2] == 3
    assert len(first["msg"]) == MAX_MESSAGE_CHARS
    assert items[-1] == {"loc": [], "msg": "5 more problems not shown", "type": "too_many_errors"}


def test_a_json_decode_error_says_why_without_the_document() -> None:
    errors = [
        {
            "type": "json_invalid",
            "loc": ("body", 14),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": "Expecting value"},
        }
    ]
    assert field_errors(errors) == [
        {"loc": ["body", 14], "msg": "JSON decode error: Expecting value", "type": "json_invalid"}
    ]
