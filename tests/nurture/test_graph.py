import pytest
from django.core.exceptions import ValidationError

from nurture.graph import graph_validate, step_order


def errors(definition) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        graph_validate(definition)
    return exc.value.message_dict["definition"]


def test_valid_graph_passes_and_orders_breadth_first():
    d = {"start": "a", "steps": {
        "a": {"type": "wait", "days": 1, "next": "b"},
        "b": {"type": "split", "percent": 50, "a": "c", "b": "d"},
        "c": {"type": "send_sms", "body": "hi", "next": "d"},
        "d": {"type": "end"}}}
    graph_validate(d)
    assert step_order(d) == ["a", "b", "c", "d"]


def test_missing_target_unknown_type_and_required_fields_are_named():
    errs = errors({"start": "a", "steps": {
        "a": {"type": "send_email", "subject": "", "body": "x", "next": "nowhere"},
        "b": {"type": "teleport"}}})
    assert any("a.subject: required" in e for e in errs)
    assert any("a.next: target step 'nowhere' does not exist" in e for e in errs)
    assert any("b.type: unknown step type 'teleport'" in e for e in errs)


def test_unreachable_step_is_refused():
    errs = errors({"start": "a", "steps": {"a": {"type": "end"}, "orphan": {"type": "end"}}})
    assert errs == ["unreachable steps: orphan."]


def test_a_loop_is_refused_every_path_must_end():
    errs = errors({"start": "a", "steps": {
        "a": {"type": "wait", "hours": 1, "next": "b"},
        "b": {"type": "wait", "hours": 1, "next": "a"}}})
    assert any("leads back to 'a'" in e for e in errs)


def test_start_must_exist_and_wait_needs_a_duration():
    errs = errors({"start": "x", "steps": {"a": {"type": "wait", "next": "a2"}, "a2": {"type": "end"}}})
    assert any("start: step 'x' does not exist" in e for e in errs)
    assert any("a: a wait needs" in e for e in errs)


def test_empty_definition_is_refused():
    assert "at least one step" in errors({})[0]
