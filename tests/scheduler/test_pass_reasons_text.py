"""The pending reasons' JSON text the pass compares with the stored one is the text json.dumps
writes for them (and PostgreSQL's jsonb prints back), whatever the messages hold."""

import json

import pytest

from scheduler.services import reasons_json


@pytest.mark.parametrize("reasons", [
    [],
    [("no_capacity", "No node has 2 free H100 together.")],
    [("waiting_for_quota", "The team's H100 quota is in use (50 of 50); 1 needed."), ("queued_behind", "3 requests ahead.")],
    [("odd", "quotes \" backslash \\ newline \n tab \t control \x01 unicode Grüße ✓")],
])
def test_reasons_json_is_the_text_json_dumps_writes(reasons):
    assert reasons_json(reasons) == json.dumps([{"code": c, "message": m} for c, m in reasons], ensure_ascii=False)
