"""A one-file HTML page of a validation report that reads offline.

GX's Data Docs load their styles and scripts from CDNs, so without a network they render as
unstyled text. This page has no external resource at all (inline CSS, no script) and says
the same thing: the verdict, every file, every check with its outcome, every error and warning.
It is a pure function of the report (no time, no absolute path), like ``validation.json``.
"""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.PASSED { color: #137333; } .FAILED { color: #b3261e; }
table { border-collapse: collapse; width: 100%; margin: .4em 0 1em; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f3f3f3; } td.ok { color: #137333; } td.bad { color: #b3261e; font-weight: 600; }
code { background: #f3f3f3; padding: 0 .25em; } li { margin: .2em 0; }
"""
_SHOWN_CHARS = 80


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _observed(result: dict[str, Any]) -> str:
    """What a check saw: its observed value, else how many rows failed it."""
    if "observed_value" in result:
        return _short(result["observed_value"])
    if "unexpected_count" in result:
        return f"{result['unexpected_count']} row(s) unexpected"
    return ""


def _suite_rows(suite: dict[str, Any]) -> list[str]:
    rows = []
    for item in suite.get("results", []):
        config = item.get("expectation_config", {})
        ok = bool(item.get("success"))
        column = config.get("kwargs", {}).get("column", "")
        rows.append(
            "<tr>"
            f"<td class={'ok' if ok else 'bad'}>{'passed' if ok else 'FAILED'}</td>"
            f"<td>{escape(config.get('description') or config.get('type', ''))}</td>"
            f"<td>{f'<code>{escape(str(column))}</code>' if column else ''}</td>"
            f"<td>{escape(config.get('severity', ''))}</td>"
            f"<td>{escape(_observed(item.get('result') or {}))}</td>"
            "</tr>"
        )
    return rows


def render_summary(report: dict[str, Any], raw_dir: str, data_docs_dir: str) -> str:
    """The page for ``report`` (a :class:`fkp.stages.validate.ValidationReport` as a dict)."""
    verdict = "PASSED" if report["success"] else "FAILED"
    errors, warnings = report.get("errors", []), report.get("warnings", [])
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Validation {verdict}: {escape(raw_dir)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Raw data validation of <code>{escape(raw_dir)}</code>: "
        f"<span class={verdict}>{verdict}</span></h1>",
        f"<p>{len(errors)} error(s), {len(warnings)} warning(s). Every check and its rows are in "
        "<code>validation.json</code>; Great Expectations' own pages are in "
        f'<a href="{escape(data_docs_dir)}/index.html">{escape(data_docs_dir)}/</a> '
        "(they load their styles from the internet).</p>",
    ]
    for title, items in (("Errors", errors), ("Warnings", warnings)):
        if items:
            parts.append(f"<h2>{title}</h2><ul>")
            parts.extend(f"<li>{escape(item)}</li>" for item in items)
            parts.append("</ul>")
    parts.append("<h2>Files</h2><table><tr><th>file</th><th>status</th><th>rows checked</th></tr>")
    for name, entry in report.get("per_file", {}).items():
        if not entry.get("present"):
            status = "not found" if entry.get("required") else "absent (optional)"
        else:
            status = "checked" if "rows" in entry else "rows not checked (see errors)"
        parts.append(
            f"<tr><td><code>{escape(name)}</code></td><td>{status}</td><td>{entry.get('rows', '')}</td></tr>"
        )
    parts.append("</table>")
    for name, entry in report.get("per_file", {}).items():
        for suite_name, suite in entry.get("suites", {}).items():
            parts.append(f"<h2><code>{escape(name)}</code>: suite <code>{escape(suite_name)}</code></h2>")
            parts.append(
                "<table><tr><th>outcome</th><th>check</th><th>column</th><th>severity</th>"
                "<th>observed</th></tr>"
            )
            parts.extend(_suite_rows(suite))
            parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
