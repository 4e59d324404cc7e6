"""In the VM: 2 x 20 and 4 x 20 Mbit/s over sctpbond --transport sctp vs iperf3 --sctp per link (same run);
throughput over 1..4 associations. Data: zeros from a pipe, as the host bench (`--data zero`) and iperf3 send:
random data would make the emulated CPU generate it too."""
import json, subprocess, sys, time, os
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from sctpbond.topology import Network, load, Topology, LinkSpec
SB = [sys.executable, "-m", "sctpbond"]
out = {}

def iperf_sctp(net, i, secs=5):
    srv = net.popen("b", ["iperf3", "-s", "-1", "-p", str(5201 + i)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    r = net.run("a", ["iperf3", "--sctp", "-c", net.addr("b", i), "-p", str(5201 + i), "-J", "-t", str(secs)], capture_output=True, text=True, timeout=60)
    srv.wait(20)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6

def bond(net, n, size, extra=()):
    lst = net.popen("b", SB + ["listen", "-t", "sctp", "-N", "-o", "/dev/null", "--stats-json", "/tmp/vl.json"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if net.run("b", ["ss", "-HlSn", "sport = :7300"], capture_output=True, text=True).stdout.strip():
            break
        time.sleep(0.1)
    t0 = time.monotonic()
    c = net.run("a", ["sh", "-c", f"head -c {size} /dev/zero | " + " ".join(SB + ["connect", "-t", "sctp", "--no-auto", "--stats-json", "/tmp/vc.json", "-o", "/dev/null", *extra] + [net.addr("b", i) for i in range(n)])], capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t0
    lst.wait(60)
    s = json.load(open("/tmp/vc.json"))
    return {"rc": [c.returncode, lst.returncode], "session_mbit_s": s["send_mbit_s"], "wall_s": round(wall, 2), "session_s": s["elapsed_s"],
            "paths_mbit_s": [p["send_mbit_s"] for p in s["paths"]], "resent_bytes": s["resent_bytes"], "stderr": c.stderr[-300:]}

with Network(load("2x20"), prefix="vb") as net:
    r0, r1 = iperf_sctp(net, 0), iperf_sctp(net, 1)
    out["iperf3_sctp_link_mbit_s"] = [round(r0, 2), round(r1, 2)]
    out["sctpbond_sctp_2x20_32MiB"] = bond(net, 2, 32 << 20)
    out["ratio_vs_2x_iperf3_sctp"] = round(out["sctpbond_sctp_2x20_32MiB"]["session_mbit_s"] / (r0 + r1), 3)
with Network(load("4x20"), prefix="vb4") as net:
    rates = [iperf_sctp(net, i) for i in range(4)]
    out["iperf3_sctp_4x20_link_mbit_s"] = [round(r, 2) for r in rates]
    out["sctpbond_sctp_4x20_48MiB"] = bond(net, 4, 48 << 20)
    out["ratio_4x20_vs_sum_iperf3_sctp"] = round(out["sctpbond_sctp_4x20_48MiB"]["session_mbit_s"] / sum(rates), 3)
    # longer: the joins of paths 1-3 and the ramp-up (slow under emulation) weigh less
    out["sctpbond_sctp_4x20_128MiB"] = bond(net, 4, 128 << 20)
    out["ratio_4x20_128MiB_vs_sum_iperf3_sctp"] = round(
        out["sctpbond_sctp_4x20_128MiB"]["session_mbit_s"] / sum(rates), 3)
for n in (1, 2, 3, 4):
    with Network(Topology(f"{n}x20", "", (LinkSpec(20),) * n), prefix=f"vs{n}") as net:
        out[f"scale_{n}"] = bond(net, n, 8 * n << 20)
print(json.dumps(out, indent=1))
json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else "out/vm-sctp-bench.json", "w"), indent=1)
