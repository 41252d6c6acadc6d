"""The landing page at `/`: every target with its last verdict, every mail domain with its last
check, each linking to its report under `/debug`."""

from __future__ import annotations

import html
import time
from urllib.parse import quote

from exporter import __version__
from exporter.domains.model import DomainResult, MxStatus, StsState
from exporter.domains.report import findings
from exporter.model import ProbeResult, Target, join_host_port
from exporter.service.state import Snapshot

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>SMTP TLS exporter</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
td.ok {{ color: #060; font-weight: bold; }}
td.failed {{ color: #a00; font-weight: bold; }}
td.pending {{ color: #666; }}
</style>
</head>
<body>
<h1>SMTP TLS exporter</h1>
<p>Version {version}. <a href="metrics">Metrics</a> &middot;
<a href="-/healthy">Health</a> &middot; <a href="-/ready">Readiness</a></p>
<p>Values come from each target's last scheduled probe, and each mail domain's last scheduled
check. <code>probe?target=NAME</code> probes a configured target now;
add <code>&amp;debug=true</code> for its report.</p>
<h2>Targets ({count})</h2>
<table>
<thead><tr><th>Target</th><th>Endpoint</th><th>Mode</th><th>Verdict</th><th>Stage</th>
<th>Reason</th><th>TLS</th><th>Certificate expires in</th><th>Last probe</th><th>Details</th>
</tr></thead>
<tbody>
{rows}
</tbody>
</table>
<h2>Mail domains ({domain_count})</h2>
<table>
<thead><tr><th>Domain</th><th>MTA-STS</th><th>Policy valid</th><th>Reason</th><th>MX hosts</th>
<th>MX compliant</th><th>TLS-RPT</th><th>Problems</th><th>Last check</th><th>Details</th>
</tr></thead>
<tbody>
{domain_rows}
</tbody>
</table>
</body>
</html>
"""


def landing_page(snap: Snapshot, now: float | None = None) -> str:
    """The landing page: one row per configured target, then per mail domain, in config order."""
    now = time.time() if now is None else now
    rows = [_row(t, snap.results.get(t.name), now) for t in snap.targets]
    domain_rows = [_domain_row(d.name, snap.domain_results.get(d.name), now) for d in snap.domains]
    return _PAGE.format(
        version=html.escape(__version__),
        count=len(snap.targets),
        rows="\n".join(rows) or '<tr><td colspan="10">No targets configured.</td></tr>',
        domain_count=len(snap.domains),
        domain_rows="\n".join(domain_rows)
        or '<tr><td colspan="10">No mail domains configured.</td></tr>',
    )


def _row(target: Target, result: ProbeResult | None, now: float) -> str:
    e = html.escape
    if result is None or result.target != target:
        verdict, css, stage, reason, tls, expiry, when = "pending", "pending", "", "", "", "", ""
    else:
        verdict, css = ("OK", "ok") if result.success else ("FAILED", "failed")
        stage = str(result.failure.stage) if result.failure else ""
        reason = str(result.failure.reason) if result.failure else ""
        tls = result.tls.version if result.tls else ""
        cert = result.certificate
        expiry = f"{cert.days_until_expiry(now):.1f} days" if cert else ""
        when = f"{max(0.0, now - result.started_at):.0f}s ago"
    link = f'<a href="debug?target={quote(target.name, safe="")}">report</a>'
    cells = [
        f"<td>{e(target.name)}</td>",
        f"<td>{e(join_host_port(target.host, target.port))}</td>",
        f"<td>{e(str(target.mode))}</td>",
        f'<td class="{css}">{verdict}</td>',
        f"<td>{e(stage)}</td>",
        f"<td>{e(reason)}</td>",
        f"<td>{e(tls)}</td>",
        f"<td>{e(expiry)}</td>",
        f"<td>{e(when)}</td>",
        f"<td>{link if result is not None else ''}</td>",
    ]
    return "<tr>" + "".join(cells) + "</tr>"


_STATE_CSS = {
    StsState.ENFORCE: "ok",
    StsState.TESTING: "ok",
    StsState.NONE: "pending",
    StsState.ABSENT: "pending",
    StsState.INVALID: "failed",
}
_MX_STATUS = {
    MxStatus.NULL: "null MX",
    MxStatus.NONE: "none",
    MxStatus.ERROR: "lookup failed",
}


def _domain_row(name: str, result: DomainResult | None, now: float) -> str:
    e = html.escape
    link = f'<a href="debug?domain={quote(name, safe="")}">report</a>'
    if result is None:  # not checked yet
        return f'<tr><td>{e(name)}</td><td class="pending">pending</td>' + "<td></td>" * 8 + "</tr>"
    sts = result.sts
    mx = _MX_STATUS.get(result.mx.status, str(len(result.mx.hosts)))
    probed = [c for c in result.mx_checks if c.compliant is not None]
    compliant = sum(1 for c in probed if c.compliant)
    rpt = "valid" if result.tlsrpt.valid else ("invalid" if result.tlsrpt.record_present else "")
    found = len(findings(result))
    cells = [
        f"<td>{e(name)}</td>",
        f'<td class="{_STATE_CSS[sts.state]}">{e(str(sts.state))}</td>',
        f"<td>{'yes' if sts.policy_valid else 'no'}</td>",
        f"<td>{e(str(sts.failure.reason)) if sts.failure else ''}</td>",
        f"<td>{e(mx)}</td>",
        f"<td>{f'{compliant} of {len(probed)}' if probed else ''}</td>",
        f"<td>{rpt}</td>",
        f'<td class="{"failed" if found else "ok"}">{found}</td>',
        f"<td>{max(0.0, now - result.started_at):.0f}s ago</td>",
        f"<td>{link}</td>",
    ]
    return "<tr>" + "".join(cells) + "</tr>"
