"""Round-trip times between zones, and the latency toxics that produce them.

    same data center              0.1 ms
    data centers of one city      1 ms
    between cities                15-30 ms (table below; 30 ms for pairs not listed)

Latency is added per direction (half the RTT each way) by the user-space
delay stage, ``chaos.toxiproxy_server`` latency toxics, because this
kernel has no netem. The proxies themselves cost about ``PROXY_RTT_MS``
per round trip (measured here), which is taken off what the toxics add.
"""

from __future__ import annotations

RTT_SAME_DC_MS = 0.1
RTT_SAME_CITY_MS = 1.0
RTT_CITIES_MS = {
    frozenset({"frankfurt", "paris"}): 15.0,
    frozenset({"frankfurt", "amsterdam"}): 20.0,
    frozenset({"paris", "amsterdam"}): 25.0,
}
RTT_CITIES_DEFAULT_MS = 30.0
PROXY_RTT_MS = 0.3


def rtt_ms(a: tuple[str, str], b: tuple[str, str]) -> float:
    """RTT between zones given as (city, data_center)."""
    if a == b:
        return RTT_SAME_DC_MS
    if a[0] == b[0]:
        return RTT_SAME_CITY_MS
    return RTT_CITIES_MS.get(frozenset({a[0], b[0]}), RTT_CITIES_DEFAULT_MS)


def latency_toxics(rtt: float) -> list[dict]:
    """Toxic bodies (Toxiproxy JSON) that make a proxied link have round-trip ``rtt`` ms."""
    one_way = max(0.0, (rtt - PROXY_RTT_MS) / 2.0)
    if one_way < 0.02:
        return []
    return [
        {"name": f"zone_{stream}", "type": "latency", "stream": stream, "toxicity": 1.0,
         "attributes": {"latency": round(one_way, 3), "jitter": 0}}
        for stream in ("upstream", "downstream")
    ]
