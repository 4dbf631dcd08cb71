"""``{% load evalsite_markdown %}{{ text|markdown }}``: text as sanitised Markdown HTML."""
from django import template
from django.utils.safestring import SafeString, mark_safe

from annotation import markdown as md

register = template.Library()


@register.filter(name="markdown", is_safe=True)
def markdown_filter(value) -> SafeString:
    """The sanitised HTML of ``value`` read as Markdown (see ``annotation/markdown.py``)."""
    # mark_safe is right here and only here: render() returns the allowlisted output of nh3.
    return mark_safe(md.render("" if value is None else str(value)))
