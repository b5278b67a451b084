"""Reports of a kit run: an HTML page a person reads (pass/fail per case, the spec reference, and
for failures the requests and answers), and JUnit XML for CI systems."""
from __future__ import annotations

import html
from pathlib import Path

from lxml import etree

from conformance.runner import CaseResult, Exchange, KitReport

STATUS_LABEL = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIPPED", "warn": "WARNING"}
CHECK_LABEL = {"pass": "passed", "fail": "FAILED", "warn": "warning", "skip": "not run"}
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#222;max-width:75rem}
h1{font-size:1.5rem} table.summary{border-collapse:collapse;margin:1rem 0}
table.summary td,table.summary th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
.pass{color:#11692b;font-weight:bold}.warn{color:#8a4b00;font-weight:bold}.fail,.error{color:#b00020;font-weight:bold}.skip{color:#8a6d00;font-weight:bold}
section.case{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
section.case.fail,section.case.error{border-color:#b00020;font-weight:normal;color:#222}
section.case.pass,section.case.skip{font-weight:normal;color:#222}
pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all;max-height:30rem}
.why{color:#444}.message{font-weight:bold}
"""


def _spec_link(spec: str) -> str:
    """The spec reference as a link; text after the URL (a section name) is kept beside it."""
    url, _, rest = spec.partition(" ")
    if url.startswith(("http://", "https://")):
        return f'<a href="{html.escape(url)}">{html.escape(url)}</a>' + (f" {html.escape(rest)}" if rest else "")
    return html.escape(spec)


def _exchange_html(number: int, exchange: Exchange) -> str:
    request_head = "\n".join(f"{k}: {v}" for k, v in exchange.request_headers.items())
    response_head = "\n".join(f"{k}: {v}" for k, v in exchange.response_headers.items())
    status = exchange.status if exchange.status is not None else "(MLLP)"
    return (f"<details open><summary>Exchange {number}: {html.escape(exchange.method)} "
            f"{html.escape(exchange.url)} &rarr; {html.escape(str(status))}</summary>"
            f"<h4>Request</h4><pre>{html.escape(exchange.method)} {html.escape(exchange.url)}\n"
            f"{html.escape(request_head)}\n\n{html.escape(exchange.request_body)}</pre>"
            f"<h4>Response</h4><pre>{html.escape(str(status))}\n{html.escape(response_head)}\n\n"
            f"{html.escape(exchange.response_body)}</pre></details>")


def _relevant_exchanges(result: CaseResult, limit: int = 40) -> list[tuple[int, Exchange]]:
    """The exchanges a failure message names (else the first ones), so a vendor sees what went wrong
    without scrolling through hundreds of passing requests."""
    messages = " ".join(c.message for c in result.checks if c.status in ("fail", "warn")) + " " + result.message
    numbered = list(enumerate(result.exchanges, 1))
    named = [(i, e) for i, e in numbered
             if e.url.split("?")[0].rsplit("/", 2)[-1] in messages or (e.status or 0) >= 500]
    return (named or numbered)[:limit]


def _case_html(result: CaseResult) -> str:
    parts = [f'<section class="case {result.status}" id="case-{html.escape(result.id)}" '
             f'data-case-id="{html.escape(result.id)}" data-status="{result.status}">',
             f'<h3><span class="{result.status} status">{STATUS_LABEL[result.status]}</span> '
             f'<code class="case-id">{html.escape(result.id)}</code> &mdash; {html.escape(result.title)}</h3>',
             f"<p>Spec: {_spec_link(result.spec)}</p>"]
    if result.why:
        parts.append(f'<p class="why">Why: {html.escape(result.why)}</p>')
    if result.message:
        parts.append(f'<p class="message">{html.escape(result.message)}</p>')
    if result.checks:
        counts = {k: sum(c.status == k for c in result.checks) for k in CHECK_LABEL}
        parts.append("<p>" + ", ".join(f"{n} {CHECK_LABEL[k]}" for k, n in counts.items() if n) + " of "
                     f"{len(result.checks)} checks.</p>")
        shown = [c for c in result.checks if c.status != "pass"]
        if shown:
            parts.append('<table class="summary checks"><thead><tr><th>Check</th><th>Result</th><th>Level</th>'
                         "<th>What happened</th></tr></thead><tbody>" + "".join(
                             f'<tr class="check" data-status="{c.status}"><td>{html.escape(c.name)}</td>'
                             f'<td class="{c.status}">{CHECK_LABEL[c.status]}</td><td>{c.level}</td>'
                             f"<td>{html.escape(c.message)}"
                             + (f' (<a href="{html.escape(c.spec)}">spec</a>)' if c.spec else "") + "</td></tr>"
                             for c in shown[:200]) + "</tbody></table>")
        with_passed = "".join(f"<li>{html.escape(c.name)}</li>" for c in result.checks if c.status == "pass")
        if with_passed:
            parts.append(f"<details><summary>Checks passed</summary><ul>{with_passed}</ul></details>")
    if result.notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) + "</ul>")
    parts.append(f"<p><small>case file conformance/cases/{html.escape(result.source)}, "
                 f"{result.duration:.2f} s</small></p>")
    if result.status in ("fail", "error"):
        parts.extend(_exchange_html(i, e) for i, e in _relevant_exchanges(result))
    parts.append("</section>")
    return "".join(parts)


AREA_VERDICT = {"fail": ("Not conformant: must be fixed", "fail"), "error": ("Could not be tested", "error"),
                "warn": ("Conformant, with recommendations not followed", "warn"), "pass": ("Conformant", "pass"),
                "skip": ("Not tested here (see why below)", "skip")}


def _areas_html(report: KitReport) -> str:
    """One line per area (FHIR search, HL7 v2 messaging, ...): the verdict a project manager needs."""
    areas: dict[str, list[CaseResult]] = {}
    for result in report.results:
        areas.setdefault(result.area or "Other", []).append(result)
    rows = []
    for area, results in areas.items():
        worst = next((s for s in ("error", "fail", "warn", "pass", "skip") if any(r.status == s for r in results)))
        text, css = AREA_VERDICT[worst]
        checks = [c for r in results for c in r.checks]
        counts = ", ".join(f"{sum(c.status == k for c in checks)} {CHECK_LABEL[k]}" for k in CHECK_LABEL
                           if any(c.status == k for c in checks))
        rows.append(f'<tr data-area="{html.escape(area)}"><td>{html.escape(area)}</td><td class="{css}">{text}</td>'
                    f"<td>{len(results)} case(s); {counts or 'no checks'}</td></tr>")
    return ('<h2>At a glance</h2><table class="summary areas"><thead><tr><th>Area</th><th>Verdict</th>'
            f"<th>Checked</th></tr></thead><tbody>{''.join(rows)}</tbody></table><h2>Cases</h2>")


def render_html(report: KitReport) -> str:
    """The whole report as one self-contained HTML page (no scripts, no external assets)."""
    rows = "".join(
        f'<tr data-case-id="{html.escape(r.id)}"><td><a href="#case-{html.escape(r.id)}">{html.escape(r.id)}</a></td>'
        f'<td class="{r.status}">{STATUS_LABEL[r.status]}</td><td>{html.escape(r.title)}</td>'
        f"<td>{html.escape(r.message[:400])}{'...' if len(r.message) > 400 else ''}</td></tr>" for r in report.results)
    verdict = "PASSED" if report.ok else "FAILED"
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>FHIR conformance kit: {verdict}</title><style>{STYLE}</style></head><body>"
        f"<h1>FHIR R4 conformance kit: <span class=\"{'pass' if report.ok else 'fail'}\">{verdict}</span></h1>"
        f"<p>FHIR base <code>{html.escape(report.fhir_base)}</code>; HL7 v2 endpoint "
        f"<code>{html.escape(report.hl7 or 'none given (HL7 cases skipped)')}</code>; run at "
        f"{html.escape(report.started)} in {report.duration:.1f} s.</p>"
        f"<p>{len(report.passed)} passed, {len(report.warned)} passed with warnings, {len(report.failed)} failed, "
        f"{len(report.skipped)} skipped of {len(report.results)} cases; "
        + ", ".join(f"{n} {CHECK_LABEL[k]}" for k, n in report.check_counts().items())
        + " single checks.</p>"
        "<p>How to read this: FAIL means the server breaks a rule the FHIR or HL7 specification states as SHALL "
        "(must): fix it before go-live. WARNING means it does not follow a recommendation (SHOULD): clients "
        "will cope, but it is worth fixing. SKIPPED means the case could not run here (the reason is given); it "
        "is not a pass. Each case below says why it matters and links the section of the specification.</p>"
        + _areas_html(report) +
        "<table class=\"summary\"><thead><tr><th>Case</th><th>Result</th><th>What</th><th>Detail</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
        + "".join(_case_html(r) for r in report.results) + "</body></html>")


def junit_xml(report: KitReport) -> bytes:
    """JUnit XML: one testcase per case; failures carry the message and the exchanges."""
    suite = etree.Element("testsuite", name="fhir-conformance-kit", tests=str(len(report.results)),
                          failures=str(sum(r.status == "fail" for r in report.results)),
                          errors=str(sum(r.status == "error" for r in report.results)),
                          skipped=str(len(report.skipped)), time=f"{report.duration:.3f}",
                          timestamp=report.started)
    properties = etree.SubElement(suite, "properties")
    etree.SubElement(properties, "property", name="fhir_base", value=report.fhir_base)
    etree.SubElement(properties, "property", name="hl7", value=report.hl7 or "")
    for result in report.results:
        case = etree.SubElement(suite, "testcase", classname="conformance", name=result.id,
                                time=f"{result.duration:.3f}")
        detail = f"{result.title}\nspec: {result.spec}\n" + "\n".join(
            f"{e.method} {e.url} -> {e.status}\n{e.response_body[:2000]}" for e in result.exchanges)
        if result.status == "warn":
            etree.SubElement(case, "system-out").text = "SHOULD not met: " + result.message
        if result.status == "fail":
            etree.SubElement(case, "failure", message=result.message).text = detail
        elif result.status == "error":
            etree.SubElement(case, "error", message=result.message).text = detail
        elif result.status == "skip":
            etree.SubElement(case, "skipped", message=result.message)
    return etree.tostring(suite, xml_declaration=True, encoding="utf-8", pretty_print=True)


def write_html(report: KitReport, path: str | Path) -> None:
    """Write the HTML report to ``path``."""
    Path(path).write_text(render_html(report), encoding="utf-8")


def write_junit(report: KitReport, path: str | Path) -> None:
    """Write the JUnit XML to ``path``."""
    Path(path).write_bytes(junit_xml(report))
