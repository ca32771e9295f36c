"""The run report: PNG plots of throughput and latency with fault windows shaded, and an HTML page.

    write(run_dir, result, windows)   -> run_dir/throughput.png, latency.png, report.html
    write_matrix(path, results)        -> a survival matrix page over several runs
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from chaos.history import OK, History

WRITE_FS = ("transfer", "add", "write", "cas")
COLORS = {"bank": "tab:blue", "register": "tab:green", "set": "tab:orange"}


def _histories(run_dir: Path) -> dict[str, History]:
    return {w: History.load(run_dir / f"{w}.jsonl") for w in ("bank", "register", "set")
            if (run_dir / f"{w}.jsonl").exists()}


def _shade(ax, windows: list[dict], t0: float) -> None:
    for w in windows:
        if w.get("skipped"):
            continue
        ax.axvspan(w["start"] - t0, w["end"] - t0, color="tab:red", alpha=0.15)
        ax.text(w["start"] - t0, 1.0, w["spec"], transform=ax.get_xaxis_transform(), fontsize=7,
                va="top", rotation=90, color="darkred")


def plots(run_dir: Path, result: dict, windows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = _histories(run_dir)
    t0 = result.get("t0") or min((o.invoke_t for h in hs.values() for o in h), default=0.0)
    title = f"{result.get('topology')} ({result.get('network')})"
    names = []

    fig, ax = plt.subplots(figsize=(11, 4))
    for w, h in hs.items():
        times = [o.complete_t - t0 for o in h if o.status == OK and o.f in WRITE_FS and o.complete_t]
        if not times:
            continue
        end = int(max(times)) + 1
        counts = [0] * (end + 1)
        for t in times:
            if t >= 0:
                counts[int(t)] += 1
        ax.plot(range(end + 1), counts, label=f"{w} ok writes/s", color=COLORS.get(w))
    _shade(ax, windows, t0)
    ax.set_xlabel("seconds since the workload started")
    ax.set_ylabel("acknowledged writes per second")
    ax.set_title(f"Throughput, {title}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "throughput.png", dpi=90)
    plt.close(fig)
    names.append("throughput.png")

    fig, ax = plt.subplots(figsize=(11, 4))
    for w, h in hs.items():
        pts = [(o.invoke_t - t0, (o.complete_t - o.invoke_t) * 1000) for o in h
               if o.status == OK and o.complete_t]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=2, label=f"{w} ok", color=COLORS.get(w))
        unk = [o.invoke_t - t0 for o in h if o.status == "unknown"]
        if unk:
            ax.scatter(unk, [3000] * len(unk), s=8, marker="x", color="black",
                       label="unknown (timeout)" if w == "bank" else None)
    _shade(ax, windows, t0)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the workload started")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"Latency, {title}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "latency.png", dpi=90)
    plt.close(fig)
    names.append("latency.png")
    return names


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return html.escape(str(v))


def survival_table(rows: list[dict], topology: str = "") -> str:
    out = ["<table><tr>" + ("<th>topology</th>" if topology else "") +
           "<th>fault</th><th>what</th><th>writes continued</th><th>writes in window</th>"
           "<th>longest write gap (RTO, s)</th><th>acknowledged writes lost (RPO)</th></tr>"]
    for r in rows:
        if r.get("skipped"):
            out.append(f"<tr>{'<td>' + topology + '</td>' if topology else ''}<td>{_fmt(r['fault'])}</td>"
                       f"<td colspan=5>{_fmt(r['what'])}</td></tr>")
            continue
        out.append(
            f"<tr>{'<td>' + html.escape(topology) + '</td>' if topology else ''}<td>{_fmt(r['fault'])}</td>"
            f"<td>{_fmt(r['what'])}</td><td>{_fmt(r['writes_continued'])}</td><td>{r['writes_in_window']}</td>"
            f"<td>{_fmt(r['rto_s'])}</td><td>{_fmt(r['rpo_lost_acknowledged'])}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


STYLE = ("<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px} .ok{color:green} .bad{color:red}</style>")


def write(run_dir: Path, result: dict, windows: list[dict]) -> Path:
    images = plots(run_dir, result, windows)
    valid = result.get("valid")
    parts = [f"<html><head><meta charset='utf-8'><title>chaos {html.escape(str(result.get('topology')))}</title>",
             STYLE, "</head><body>",
             f"<h1>Chaos run: {html.escape(str(result.get('topology')))} on {html.escape(str(result.get('network')))}"
             f" &mdash; <span class='{'ok' if valid else 'bad'}'>valid={str(valid).lower()}</span></h1>",
             f"<p>{result.get('ops', 0)} operations, {result.get('ok_writes', 0)} acknowledged writes. "
             f"Converged after the heal: {_fmt(result.get('converged'))}; heal to first write "
             f"{_fmt(result.get('heal_to_first_write_s'))} s; from the clients' stop to every replica on one "
             f"digest {_fmt(result.get('stop_to_converged_s'))} s.</p>"]
    if result.get("why_not_valid"):
        parts.append("<ul>" + "".join(f"<li class='bad'>{html.escape(w)}</li>" for w in result["why_not_valid"])
                     + "</ul>")
    parts.append("<h2>Checkers</h2><table><tr><th>checker</th><th>valid</th><th>stats</th><th>errors</th></tr>")
    for v in result.get("verdicts", []):
        parts.append(f"<tr><td>{v['checker']}</td><td>{_fmt(v['valid'])}</td>"
                     f"<td><code>{html.escape(json.dumps(v['stats']))}</code></td>"
                     f"<td>{'<br>'.join(html.escape(e) for e in v['errors'][:5])}</td></tr>")
    parts.append("</table><h2>Faults: survival</h2>")
    parts.append(survival_table(result.get("survival", [])))
    parts.append("<h2>Throughput and latency</h2>")
    parts += [f"<p><img src='{name}'></p>" for name in images]
    parts.append("<h2>Replica digests after the heal</h2><table>")
    parts += [f"<tr><td>{html.escape(a)}</td><td><code>{html.escape(d)}</code></td></tr>"
              for a, d in result.get("digests", {}).items()]
    parts.append("</table><p>Files: bank.jsonl, register.jsonl, set.jsonl (histories), final.json, "
                 "windows.json, verdict.json, r*.log (replica logs).</p></body></html>")
    path = run_dir / "report.html"
    path.write_text("\n".join(parts))
    return path


def write_matrix(path: Path, results: list[dict]) -> Path:
    parts = ["<html><head><meta charset='utf-8'><title>chaos survival matrix</title>", STYLE, "</head><body>",
             "<h1>Survival matrix</h1>"]
    for r in results:
        rel = Path(r["run_dir"]).name
        parts.append(f"<h2>{html.escape(r['topology'])} ({html.escape(r['network'])}) &mdash; "
                     f"valid={str(r.get('valid')).lower()} &mdash; <a href='{rel}/report.html'>run report</a></h2>")
        parts.append(survival_table(r.get("survival", []), r["topology"]))
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
