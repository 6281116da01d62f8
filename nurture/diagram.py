"""A workflow's step graph drawn as an SVG diagram, on the server: no
JavaScript, no library, nothing fetched by the browser.

Steps are laid out in rows by their longest distance from the start (the
graph has no loops, ``nurture.graph``), so a step always sits below every
step that leads to it; paths are curves with arrow heads, labelled when a
step has more than one (Yes/No, A/B with the split's share, met/timeout).
"""
from __future__ import annotations

from collections.abc import Callable

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from nurture.graph import TARGETS, step_order, successors
from nurture.labels import step_detail, step_type_label

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 200, 50, 30, 56, 16
_FILL = {  # (fill, stroke) per kind of step
    "message": ("#e3f0fa", "#417690"),
    "wait": ("#fff6d6", "#a08400"),
    "decision": ("#f1e6fa", "#7a3e9d"),
    "action": ("#e6f4ea", "#2e7d32"),
    "end": ("#eeeeee", "#555555"),
}
_KIND = {
    "send_email": "message", "send_sms": "message", "notify": "message", "webhook": "message",
    "wait": "wait", "wait_until": "wait", "branch": "decision", "split": "decision", "end": "end",
}
def path_label(step: dict, path: str) -> str:
    kind = step.get("type")
    if kind == "split":
        p = step.get("percent") if isinstance(step.get("percent"), int) else 0
        return f"A ({p}%)" if path == "a" else f"B ({100 - p}%)"
    if kind == "wait_until":
        return "met" if path == "next" else "timed out"
    return {"yes": "Yes", "no": "No"}.get(path, "")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def workflow_diagram(definition: dict, *, link: Callable[[str], str] | None = None,
                     templates: dict | None = None) -> SafeString:
    """The SVG of ``definition`` (an empty string when it has no steps).
    ``link(step key)`` gives the URL each box links to (the step's edit
    form), or None for boxes without a link; ``templates`` ({"<id>":
    content}) gives the subjects of the email templates steps name."""
    steps = (definition or {}).get("steps")
    if not isinstance(steps, dict) or not steps or definition.get("start") not in steps:
        return mark_safe("")
    order = step_order(definition)
    # Longest distance from the start: relax the paths in a topological
    # order (a depth-first post-order, reversed).
    post, seen = [], set()
    stack = [(definition["start"], iter(successors(steps[definition["start"]])))]
    seen.add(definition["start"])
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            post.append(node)
            stack.pop()
        elif nxt in steps and nxt not in seen:
            seen.add(nxt)
            stack.append((nxt, iter(successors(steps[nxt]))))
    depth = {k: 0 for k in post}
    for node in reversed(post):
        for nxt in successors(steps[node]):
            if nxt in depth and nxt != node:
                depth[nxt] = max(depth[nxt], depth[node] + 1)
    rows: dict[int, list[str]] = {}
    for key in sorted(depth, key=lambda k: order.index(k) if k in order else len(order)):
        rows.setdefault(depth[key], []).append(key)
    widest = max(len(r) for r in rows.values())
    width = 2 * MARGIN + widest * NODE_W + (widest - 1) * GAP_X
    height = 2 * MARGIN + len(rows) * NODE_H + (len(rows) - 1) * GAP_Y
    pos: dict[str, tuple[float, float]] = {}
    for d, keys in rows.items():
        row_w = len(keys) * NODE_W + (len(keys) - 1) * GAP_X
        x0 = (width - row_w) / 2
        for i, key in enumerate(keys):
            pos[key] = (x0 + i * (NODE_W + GAP_X), MARGIN + d * (NODE_H + GAP_Y))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="nurture-diagram" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        "<title>The journey's steps and paths</title>",
        '<defs><marker id="nurture-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#666"/></marker></defs>',
    ]
    for key in pos:
        step = steps[key]
        x1, y1 = pos[key][0] + NODE_W / 2, pos[key][1] + NODE_H
        targets = [f for f in TARGETS.get(step.get("type"), ()) if step.get(f) in pos]
        for n, field in enumerate(targets):
            tx, ty = pos[step[field]]
            # Two paths to one step leave the box side by side, not on top of each other.
            sx = x1 + (n - (len(targets) - 1) / 2) * 40
            x2, y2 = tx + NODE_W / 2, ty
            bend = max(GAP_Y / 2, (y2 - y1) / 2)
            parts.append(
                f'<path class="nurture-edge" data-from="{escape(key)}" data-to="{escape(step[field])}" '
                f'd="M {sx:.1f} {y1:.1f} C {sx:.1f} {y1 + bend:.1f}, {x2:.1f} {y2 - bend:.1f}, {x2:.1f} {y2 - 2:.1f}" '
                'fill="none" stroke="#666" stroke-width="1.5" marker-end="url(#nurture-arrow)"/>'
            )
            label = path_label(step, field) if len(targets) > 1 else ""
            if label:
                parts.append(f'<text x="{sx + 4:.1f}" y="{y1 + 16:.1f}" fill="#333" font-size="11">{escape(label)}</text>')
    for key, (x, y) in pos.items():
        step = steps[key]
        fill, stroke = _FILL[_KIND.get(step.get("type"), "action")]
        title = f"{key}: {step_type_label(step.get('type') or '')}"
        summary = step_detail(step, templates)
        box = (
            f'<g class="nurture-node" data-step="{escape(key)}"><title>{escape(title)}'
            f'{escape(" — " + summary) if summary else ""}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="8" fill="{fill}" stroke="{stroke}" '
            'stroke-width="1.5"/>'
            f'<text x="{x + 10:.1f}" y="{y + 20:.1f}" font-weight="bold" fill="#222">'
            f'{escape(_clip(step_type_label(step.get("type") or ""), 26))}</text>'
            f'<text x="{x + 10:.1f}" y="{y + 38:.1f}" fill="#444">{escape(_clip(summary or key, 30))}</text></g>'
        )
        url = link(key) if link else None
        parts.append(f'<a href="{escape(url)}">{box}</a>' if url else box)
    parts.append("</svg>")
    return mark_safe("".join(parts))
