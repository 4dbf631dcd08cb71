"""``{% load evalsite_errors %}{{ exception|error_message }}``: the reason an error page gives."""
import re

from django import template

register = template.Library()

# get_object_or_404's message names a model class: "No StudyMember matches the given query."
_NO_MATCH = re.compile(r"No ([A-Za-z]\w*) matches the given query\.")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@register.filter
def error_message(value) -> str:
    """The message of a ``PermissionDenied`` or ``Http404`` in plain words, or "" for none.

    Our own messages (``annotation/access.py``) are written for people and pass as they are.
    Django hands the 404 page the exception's class name when the message is not a string
    (``Resolver404`` for an unknown URL): that is no sentence, so nothing is shown.
    """
    text = str(value or "").strip()
    if " " not in text:
        return ""
    match = _NO_MATCH.fullmatch(text)
    if match:
        return f"There is no such {_CAMEL.sub(' ', match[1]).lower()}."
    return text
