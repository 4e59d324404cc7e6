"""The lab: what measures sctpbond from outside, on emulated hosts (network namespaces joined by shaped veth links).

It drives the product only as processes (`python -m sctpbond listen|connect`) and reads what they report (exit
codes, --stats-json), so it imports none of the runtime, the protocol core or the transports: `bench`, `demo` and
`bench-failover` measure the same program a user runs. `topology` builds the hosts (the tests use it too).
"""
