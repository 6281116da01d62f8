"""Request parsers that refuse text the database cannot store.

A NUL character or a lone surrogate in any value (or key) of a request body is
a 400 naming the field, before a serializer or service sees it; otherwise it
would surface as a database error (a 500) at save time. The events batch and
the public form endpoints use ``JSONParser`` (no such check): they check item
by item, so one bad item does not refuse the rest. Every JSON parser here
answers a body nested too deeply as a parse error, not a 500.
"""
from __future__ import annotations

from django.http import QueryDict
from rest_framework import exceptions, parsers

from martech.services.normalize import find_unstorable


def _first_unstorable(data) -> tuple[str, str] | None:
    if isinstance(data, QueryDict):
        # A form field's values are a list: name the field, not an index.
        for key in data:
            found = find_unstorable([key, *data.getlist(key)])
            if found:
                return key, found[1]
        return None
    return find_unstorable(data)


def _refuse(data) -> None:
    found = _first_unstorable(data)
    if found:
        raise exceptions.ValidationError({found[0] or "non_field_errors": [found[1]]})


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with a body nested deeper than Python's JSON decoder
    goes (a RecursionError, a 500 otherwise) answered as a parse error."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - the body is nested too deeply.") from None


class StorableJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        _refuse(data)
        return data


class StorableFormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        _refuse(data)
        return data


class StorableMultiPartParser(parsers.MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        result = super().parse(stream, media_type, parser_context)
        _refuse(result.data)
        return result
