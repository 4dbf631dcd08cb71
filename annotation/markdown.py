"""Model outputs, prompts and evaluator-written text as safe HTML: Markdown in, sanitised HTML out.

Two layers, each enough on its own for the common attacks:

1. markdown-it-py's ``commonmark`` preset with tables and strikethrough, raw HTML *off*: a
   ``<script>`` or ``<img onerror>`` in the text is shown as the characters it is (an annotator
   judging an output should see that the model wrote it), never parsed as markup.  Its link
   check already refuses ``javascript:``, ``vbscript:``, ``file:`` and ``data:`` links.
2. nh3 (the Ammonia sanitiser) over the result, with an explicit allowlist: the tags Markdown
   produces, no ``style``, no event handlers, ``href`` only with ``http``, ``https`` or
   ``mailto`` and never relative (a link in an output must not act on this site), and every
   link given ``rel="noopener noreferrer nofollow"`` and ``target="_blank"`` (following it
   does not leave the task page).

Decisions a reader should know:

- A single newline is a line break (``breaks``), as the outputs were shown before Markdown:
  poems, addresses and step lists written without blank lines keep their lines.
- Images are never loaded from text: ``![alt](url)`` becomes a link reading "image: alt".  A
  URL chosen by a model could be a tracking beacon, and the Content-Security-Policy would
  block another origin's image anyway.  Generated images are shown by the page, not through
  Markdown.
- Table column alignment becomes a class (``align-left|center|right``), since the CSP forbids
  ``style`` attributes.
- Code keeps its indentation and is shown in monospace (``<pre><code>``); the fence's
  language is dropped (no highlighting, and no class a text could choose).
- A text longer than ``MAX_MARKDOWN_CHARS`` is shown as plain text with its line breaks, not
  parsed: markdown-it-py is linear but slow on bracket-heavy input (about 30 ms per thousand
  characters of ``![``, against 0.3 ms for ordinary prose), and a page must not take seconds.

Pure Python, no Django import: the template filter in ``annotation/templatetags`` wraps it.
The parser and the cleaner are built once at import and hold no per-call state, so rendering
stays cheap and nothing grows with use.
"""
from __future__ import annotations

import html

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

__all__ = ["ALLOWED_TAGS", "ALLOWED_ATTRIBUTES", "ALLOWED_URL_SCHEMES", "MAX_MARKDOWN_CHARS", "render"]

MAX_MARKDOWN_CHARS = 40_000

ALLOWED_TAGS = frozenset({
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6",
    "strong", "em", "s", "code", "pre", "blockquote",
    "ul", "ol", "li",
    "table", "thead", "tbody", "tr", "th", "td",
    "a",
})
# ``rel`` and ``target`` are set by the cleaner itself, whatever the text said.
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
ALLOWED_URL_SCHEMES = frozenset({"http", "https", "mailto"})
_ALIGN_CLASSES = {"align-left", "align-center", "align-right"}
_LINK_REL = "noopener noreferrer nofollow"

_parser = (
    MarkdownIt("commonmark", {"html": False, "breaks": True})
    .enable(["table", "strikethrough"])
)

_cleaner = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    # The content of these is dropped too, not only the tags, should any ever reach the cleaner.
    clean_content_tags={"script", "style", "iframe", "object", "embed", "template", "noscript", "svg", "math"},
    attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
    allowed_classes={"th": _ALIGN_CLASSES, "td": _ALIGN_CLASSES},
    url_schemes=set(ALLOWED_URL_SCHEMES),
    url_relative="deny",
    link_rel=_LINK_REL,
    set_tag_attribute_values={"a": {"target": "_blank"}},
    strip_comments=True,
)


def _image_as_link(self, tokens: list[Token], idx: int, options, env) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env) or "untitled"
    src = token.attrGet("src") or ""
    return f'<a href="{html.escape(str(src), quote=True)}">image: {html.escape(alt)}</a>'


_parser.add_render_rule("image", _image_as_link)


def _fix_tokens(tokens: list[Token]) -> None:
    """Alignment styles to classes; fence languages dropped (both would be stripped anyway)."""
    for token in tokens:
        if token.type in ("th_open", "td_open"):
            style = str(token.attrGet("style") or "")
            if style.startswith("text-align:"):
                token.attrs.pop("style", None)
                token.attrSet("class", f"align-{style.removeprefix('text-align:')}")
        elif token.type == "fence":
            token.info = ""


def render(text: str) -> str:
    """Sanitised HTML for ``text`` read as Markdown.

    Safe to insert into a page as is: the result passes the allowlist above whatever the
    input, hostile or not.  An empty or missing text gives an empty string; a text over
    ``MAX_MARKDOWN_CHARS`` comes back escaped, with its line breaks, unparsed.
    """
    if not text:
        return ""
    if len(text) > MAX_MARKDOWN_CHARS:
        lines = html.escape(text).replace("\r\n", "\n").replace("\n", "<br>\n")
        return f'<p class="plain-text">{lines}</p>'
    tokens = _parser.parse(text)
    _fix_tokens(tokens)
    return _cleaner.clean(_parser.renderer.render(tokens, _parser.options, {}))
