"""Chaos suite: real replica processes under faults, with checked histories.

    history.py          operation records (invoke / ok / fail / unknown)
    checkers.py         bank, register (linearizability), set
    toxiproxy_server.py an asyncio TCP proxy serving the Toxiproxy HTTP API subset we use
    netns.py            hosts as network namespaces, zone latencies, nftables cuts
    nemesis.py          faults as start/heal pairs
    runner.py           workloads, schedules, convergence, reports (python -m chaos)
"""
