"""Outputs and prompts as Markdown: what renders (code, tables, lists) and what never gets through
(scripts, event handlers, script URLs, images, styles), checked on hostile inputs."""
import subprocess
import sys
import timeit
from html.parser import HTMLParser

import pytest
from django.template import Context, Template

from annotation import markdown

HOSTILE = {
    "script tag": "<script>window.pwned=1</script>",
    "script split over lines": "<scr\nipt>window.pwned=1</script>",
    "img onerror": '<img src=x onerror="window.pwned=1">',
    "svg onload": "<svg onload=alert(1)><circle r=1 /></svg>",
    "raw html block": "<div onclick=\"alert(1)\">\n\n**bold inside**\n\n</div>",
    "iframe": '<iframe src="javascript:alert(1)"></iframe>',
    "style tag": "<style>body{display:none}</style>",
    "html comment": "<!-- <script>alert(1)</script> -->",
    "javascript link": "[click](javascript:alert(1))",
    "javascript link mixed case": "[click](JaVaScRiPt:alert(1))",
    "javascript link entity": "[click](&#106;avascript:alert(1))",
    "javascript link tab": "[click](java\tscript:alert(1))",
    "javascript autolink": "<javascript:alert(1)>",
    "javascript reference link": "[click][x]\n\n[x]: javascript:alert(1)",
    "vbscript link": "[click](vbscript:msgbox(1))",
    "data link": "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "data image": "![x](data:image/png;base64,iVBORw0KGgo=)",
    "image onerror in title": '![x](http://example.com/a.png "t\\" onerror=\\"alert(1))',
    "image breaking out of src": '![x](x" onerror="alert(1))',
    "relative link": "[sign out](/logout/)",
    "protocol-relative link": "[x](//evil.example/)",
    "link with html in text": "[<img src=x onerror=alert(1)>](http://example.com)",
    "html inside code span": "`<script>alert(1)</script>`",
    "html inside fence": "```html\n<script>alert(1)</script>\n```",
    "html in table cell": "| a |\n|---|\n| <img src=x onerror=alert(1)> |",
    "nested emphasis and html": "**<b onmouseover=alert(1)>x</b>**",
    "entity-encoded tag": "&lt;script&gt;alert(1)&lt;/script&gt;",
    "null byte": "a\x00<script>alert(1)</script>",
    "form": '<form action="/logout/" method="post"><button>x</button></form>',
    "style attribute": '<p style="position:fixed;top:0">x</p>',
    "meta refresh": '<meta http-equiv="refresh" content="0;url=http://evil.example/">',
    "base tag": '<base href="http://evil.example/">',
    "link title quote": '[x](http://example.com "a\\" onmouseover=\\"alert(1)")',
}


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Collect()
    parser.feed(html)
    parser.close()
    return parser.tags


def _assert_allowlisted(html: str) -> None:
    for tag, attrs in _tags(html):
        assert tag in markdown.ALLOWED_TAGS, (tag, html)
        allowed = markdown.ALLOWED_ATTRIBUTES.get(tag, set()) | {"rel", "target"} if tag == "a" \
            else markdown.ALLOWED_ATTRIBUTES.get(tag, set()) | ({"class"} if tag in ("th", "td") else set())
        assert set(attrs) <= allowed, (tag, attrs, html)
        if tag == "a":
            assert attrs["rel"] == "noopener noreferrer nofollow", html
            href = attrs.get("href")
            if href is not None:
                assert href.split(":", 1)[0].lower() in markdown.ALLOWED_URL_SCHEMES and ":" in href, html


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_markup_comes_out_inert(text):
    html = markdown.render(text)
    _assert_allowlisted(html)
    lowered = html.lower()
    # Mentions in text are fine (escaped, "&lt;script"); markup is not.
    for needle in ("<script", "<img", "<svg", "<iframe", "<style", "<form", "<meta", "<base", "<div", "<b ",
                   'href="javascript', 'href="data', 'href="vbscript', 'href="/'):
        assert needle not in lowered, (needle, html)


def test_raw_html_is_shown_as_the_text_the_model_wrote():
    html = markdown.render('Try <script>window.pwned=1</script> and <img src=x onerror="window.pwned=1">')
    assert html == ("<p>Try &lt;script&gt;window.pwned=1&lt;/script&gt; and "
                    '&lt;img src=x onerror="window.pwned=1"&gt;</p>\n')


def test_a_script_link_stays_text_and_a_good_link_gets_rel_and_a_new_tab():
    html = markdown.render("[bad](javascript:alert(1)) [good](https://example.com/a?b=1&c=2)")
    assert "[bad](javascript:alert(1))" in html
    assert ('<a href="https://example.com/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer nofollow">good</a>'
            in html)


def test_relative_and_data_urls_lose_their_href_but_keep_their_text():
    html = markdown.render("[out](/logout/) and [d](data:text/html,x)")
    assert "href" not in html
    assert ">out</a>" in html


def test_an_image_is_a_link_saying_image_never_an_img():
    html = markdown.render("![a red *cat*](https://example.com/cat.png)")
    assert html == ('<p><a href="https://example.com/cat.png" target="_blank" rel="noopener noreferrer nofollow">'
                    "image: a red cat</a></p>\n")


def test_code_blocks_keep_their_indentation_in_pre_and_code():
    fenced = markdown.render("```python\ndef f(x):\n    if x:\n        return [x]\n\treturn []\n```")
    assert fenced == "<pre><code>def f(x):\n    if x:\n        return [x]\n\treturn []\n</code></pre>\n"
    indented = markdown.render("Code:\n\n    for i in range(3):\n        print(i)\n")
    assert "<pre><code>for i in range(3):\n    print(i)\n</code></pre>" in indented
    assert markdown.render("use `a  <b>`") == "<p>use <code>a  &lt;b&gt;</code></p>\n"


def test_a_table_renders_with_its_alignment_as_classes():
    html = markdown.render("| model | score |\n|:--|--:|\n| x | 0.91 |\n| y | 0.87 |")
    assert html.startswith("<table>\n<thead>\n<tr>\n<th class=\"align-left\">model</th>\n"
                           "<th class=\"align-right\">score</th>")
    assert '<td class="align-right">0.87</td>' in html
    assert html.count("<tr>") == 3 and "style" not in html


def test_lists_render_nested_and_numbered_from_their_start():
    html = markdown.render("3. three\n4. four\n   - a\n   - b\n")
    assert html == ('<ol start="3">\n<li>three</li>\n<li>four\n<ul>\n<li>a</li>\n<li>b</li>\n</ul>\n</li>\n</ol>\n')


def test_a_single_newline_is_a_line_break_as_the_plain_text_showed_it():
    assert markdown.render("roses are red\nviolets are blue") == "<p>roses are red<br>\nviolets are blue</p>\n"


def test_headings_quotes_rules_and_strikethrough_render():
    html = markdown.render("# Title\n\n> quoted\n\n---\n\n~~old~~ **new** _it_")
    assert html == ("<h1>Title</h1>\n<blockquote>\n<p>quoted</p>\n</blockquote>\n<hr>\n"
                    "<p><s>old</s> <strong>new</strong> <em>it</em></p>\n")


def test_an_overlong_text_is_shown_escaped_with_its_lines_and_not_parsed():
    text = "**not bold** <script>x</script>\n" + "[" * markdown.MAX_MARKDOWN_CHARS
    html = markdown.render(text)
    assert html.startswith('<p class="plain-text">**not bold** &lt;script&gt;x&lt;/script&gt;<br>\n[[[')
    _assert_allowlisted(html.replace(' class="plain-text"', ""))


def test_empty_text_renders_nothing():
    assert markdown.render("") == ""


def test_a_typical_two_kilobyte_output_renders_in_a_few_milliseconds():
    text = ("Here is the plan:\n\n1. read the input\n2. sort it\n\n```python\ndef median(xs):\n    xs = sorted(xs)\n"
            "    return xs[len(xs) // 2]\n```\n\n| n | median |\n|--:|--:|\n| 3 | 2 |\n\nSee <https://example.com>. ")
    text = (text + "More *explanation* of `median` and why it works. " * 60)[:2048]
    seconds = min(timeit.repeat(lambda: markdown.render(text), number=20, repeat=3)) / 20
    assert seconds < 0.01, f"{seconds * 1000:.2f} ms to render 2 KB"


def test_the_filter_marks_the_sanitised_html_safe_and_nothing_else():
    template = Template("{% load evalsite_markdown %}<div>{{ text|markdown }}</div>")
    out = template.render(Context({"text": "**hi** <b>there</b>"}))
    assert out == "<div><p><strong>hi</strong> &lt;b&gt;there&lt;/b&gt;</p>\n</div>"
    assert template.render(Context({"text": None})) == "<div></div>"


def test_the_module_does_not_import_django():
    code = "import sys, annotation.markdown; assert 'django' not in sys.modules, 'django imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
